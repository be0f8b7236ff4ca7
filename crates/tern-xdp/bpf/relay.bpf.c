// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// tern's kernel fast path: relays TURN traffic between a client and a peer without waking user
// space. See the crate documentation (src/lib.rs) for the design; in short:
//
//   client --ChannelData--> listener   =>  relay --UDP--> peer          (from_client, channel)
//   client --Send ind.----> listener   =>  relay --UDP--> peer          (from_client, permission)
//   peer   --UDP----------> relay      =>  listener --ChannelData--> client (from_peer, channel)
//   peer   --UDP----------> relay      =>  listener --Data ind.----> client (from_peer, permission)
//   client --ChannelData/Send--> listener, peer = another allocation's relay address
//                                      =>  listener --ChannelData/Data ind.--> its client
//
// Every address is kept as 16 bytes (IPv4 as ::ffff:a.b.c.d) so one map serves both families and
// cross-family allocations. Whatever this program does not recognise, or cannot forward (no next
// hop learned yet, the MTU, IP options, fragments, a missing IPv4 UDP checksum that IPv6 would
// need) passes to user space unchanged.
//
// The next hop of an address is learned from the packets that come from it for an installed
// entry: the interface they arrive on and their Ethernet addresses, swapped. No route lookup, so
// the host need not forward (bpf_fib_lookup works only where IP forwarding is on).
//
// The new headers are written fresh in front of the untouched payload: the packet head moves by the
// difference in header length (bpf_xdp_adjust_head) and the tail by the difference in trailing bytes
// (ChannelData padding, attributes after DATA, Data indication padding). The UDP checksum is
// updated incrementally (RFC 1624) from the old one: the payload keeps its 16-bit alignment because
// every prefix added or removed is a multiple of 4 bytes.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// bpf_redirect and bpf_check_mtu need a GPL-compatible licence.
char LICENSE[] SEC("license") = "GPL";

// ---- Maps (layouts mirrored in src/maps.rs) -----------------------------------------------------

// User space sets the real sizes before loading (FastPath capacity).
#define DEFAULT_ENTRIES 1024
#define MAX_INTERFACES 64
#define NO_SLOT 0xffffffff

struct client_key {
	struct in6_addr client_ip; // the client's address as seen by tern
	struct in6_addr server_ip; // tern's listening address the client sends to
	struct in6_addr peer_ip;   // permission entries: the permitted peer; channel entries: zero
	__be16 client_port;
	__be16 server_port;
	__be16 channel; // channel entries: the channel number; permission entries: zero
	__u16 pad;
};

struct to_peer {
	struct in6_addr relay_ip; // the allocation's relay address (the peer's family)
	struct in6_addr peer_ip;  // channel entries: the bound peer; permission entries: unused
	// The peer is one of tern's own relay addresses (another allocation): that address as its
	// socket is bound here (behind a 1:1 NAT, the private one), and this allocation's relay
	// address as the other one sees it (the advertised one). Zero when the peer is elsewhere.
	struct in6_addr loop_relay_ip;
	struct in6_addr loop_self_ip;
	__be16 relay_port;
	__be16 peer_port;
	__u32 slot; // index into `counters`
};

struct peer_key {
	struct in6_addr relay_ip;
	struct in6_addr peer_ip;
	__be16 relay_port;
	__be16 peer_port; // channel entries: the bound port; permission entries: zero (any port)
};

#define TO_CLIENT_RELAY_PORTS_ONLY 1 // the peer is one of tern's addresses: relay-range ports only

struct to_client {
	struct in6_addr client_ip;
	struct in6_addr server_ip;
	__be16 client_port;
	__be16 server_port;
	__be16 channel; // zero: no channel, send a Data indication
	__u16 flags;
	__u32 slot;
};

struct counters {
	__u64 to_peer_packets;
	__u64 to_peer_bytes; // payload bytes (what the peer receives)
	__u64 to_client_packets;
	__u64 to_client_bytes; // payload bytes (what the peer sent)
};

// How to reach an address: learned from the last packet that came from it for an installed
// entry (the interface it arrived on, and its Ethernet addresses swapped).
struct hop {
	__u32 ifindex;
	__u8 dmac[ETH_ALEN]; // the neighbour that delivered it (the address itself, or a router)
	__u8 smac[ETH_ALEN]; // ours on that interface
};

#define INTERFACE_NATIVE 1 // attached in the driver (not generic XDP)
#define INTERFACE_TX_BY_REDIRECT 2 // veth: XDP_TX would not wake the other end; redirect does

// Why a packet was not relayed, or that it was: a per-CPU array indexed by these.
enum outcome {
	OUT_RELAYED = 0,
	OUT_NOT_OURS, // not UDP/IP, or no entry: normal traffic for user space
	OUT_UNSUPPORTED, // IP options/extension headers, fragments, odd lengths, oversize STUN
	OUT_NO_HOP, // no packet from the destination seen yet, so no next hop to send it to
	OUT_TOO_BIG, // the rewritten packet would exceed the egress MTU
	OUT_NO_CHECKSUM, // IPv4 datagram without UDP checksum bound for IPv6
	OUT_ADJUST_FAILED, // the driver refused to move head or tail
	OUT_PARTIAL_CHECKSUM, // sent on this host with checksum offload: only the pseudo header's sum
	OUT_COUNT,
};

// The relay port range (min-port..max-port): a permission for one of tern's own addresses
// passes only datagrams from those ports, as user space's does.
volatile const __u16 relay_port_min = 0;
volatile const __u16 relay_port_max = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, struct client_key);
	__type(value, struct to_peer);
} from_client SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct to_client);
} from_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

// Everything relayed, summed over entries (the server's metrics read this one cell).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OUT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} outcomes SEC(".maps");

// Next hops by address (16 bytes, IPv4 mapped), least recently used out first.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, struct in6_addr);
	__type(value, struct hop);
} hops SEC(".maps");

// The interfaces the program is attached to, by ifindex: INTERFACE_* flags.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_INTERFACES);
	__type(key, __u32);
	__type(value, __u32);
} interfaces SEC(".maps");

// Scratch space for summing a Send indication's prefix and for moving a payload: too big for the
// 512-byte stack.
#define MAX_MOVE 2048
struct scratch {
	union {
		__be32 words[MAX_MOVE / 4];
		__u8 bytes[MAX_MOVE];
	};
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

// ---- Constants ---------------------------------------------------------------------------------

#define STUN_HEADER_LEN 20
#define STUN_MAGIC_COOKIE 0x2112A442
#define STUN_SEND_INDICATION 0x0016
#define STUN_DATA_INDICATION 0x0017
#define ATTR_XOR_PEER_ADDRESS 0x0012
#define ATTR_DATA 0x0013
#define CHANNEL_MIN 0x4000
#define CHANNEL_MAX 0x4FFF // RFC 8656 §12
#define CD_HEADER_LEN 4

// Bounds that keep the verifier's work finite; a Send indication beyond them goes to user space.
#define MAX_ATTRS 8
#define MAX_SEND_PREFIX 128 // STUN header + attributes before DATA's value
#define MAX_SUFFIX 16 // bytes after the relayed payload (padding, FINGERPRINT)
#define MAX_TRAILER 64 // Ethernet padding after a short datagram
#define MAX_UDP_LEN 0x3fff // masks offsets for the verifier; larger datagrams go to user space

#define HOP_LIMIT 64

// `x & mask`, with the mask kept even where the compiler could prove it redundant: the verifier
// needs it to bound a variable packet offset.
#define BOUNDED(x, mask)                         \
	({                                       \
		__u32 __v = (x);                 \
		asm volatile("" : "+r"(__v));    \
		__v &(mask);                     \
	})

// ---- Checksums (RFC 1071 sums, RFC 1624 incremental update) --------------------------------------

static __always_inline __u32 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u32)sum;
}

// Sum of a 16-byte address in network order, as 16-bit words.
static __always_inline __u64 sum_addr(const struct in6_addr *a)
{
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 w = bpf_ntohl(a->in6_u.u6_addr32[i]);
		s += (w >> 16) + (w & 0xffff);
	}
	return s;
}

static __always_inline int is_v4(const struct in6_addr *a)
{
	return a->in6_u.u6_addr32[0] == 0 && a->in6_u.u6_addr32[1] == 0 &&
	       a->in6_u.u6_addr32[2] == bpf_htonl(0x0000ffff);
}

// The pseudo header of RFC 768 / RFC 8200 §8.1 plus the UDP header without its checksum: what a
// rewrite changes around the payload. IPv4-mapped addresses sum like the plain IPv4 address
// (the ::ffff word aside, which is subtracted).
static __always_inline __u64 sum_udp_frame(const struct in6_addr *src, const struct in6_addr *dst,
					   __be16 sport, __be16 dport, __u16 udp_len)
{
	__u64 s = sum_addr(src) + sum_addr(dst);
	if (is_v4(src))
		s -= 0xffff * 2; // both addresses are mapped: same family
	s += IPPROTO_UDP + udp_len; // pseudo header
	s += bpf_ntohs(sport) + bpf_ntohs(dport) + udp_len; // UDP header
	return s;
}

// Whether the UDP checksum is a partial one: a datagram sent on this host (another namespace,
// a container) through a veth with transmit checksum offload carries only the folded sum of its
// pseudo header, for a NIC that never comes to finish it. The incremental update cannot start
// from that, and the payload's sum is not known. A complete checksum matches by chance once in
// 65536 datagrams, which then go to user space: no harm.
static __always_inline int partial_checksum(const struct in6_addr *src, const struct in6_addr *dst,
					    __u16 udp_len, __u16 check)
{
	__u64 s = sum_addr(src) + sum_addr(dst) + IPPROTO_UDP + udp_len;
	if (is_v4(src))
		s -= 0xffff * 2;
	__u16 folded = fold(s);
	return check == folded || (folded == 0xffff && check == 0) || (folded == 0 && check == 0xffff);
}

static __always_inline __u16 ipv4_header_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += bpf_ntohs(w[i]);
	return bpf_htons((__u16)~fold(s));
}

// ---- Parsed packet -----------------------------------------------------------------------------

struct frame {
	struct in6_addr src;
	struct in6_addr dst;
	__be16 sport;
	__be16 dport;
	__u16 udp_len; // host order, header included
	__u16 udp_check; // network order, as received
	__u32 l4_off; // offset of the UDP header from the Ethernet header
	__u32 trailer; // bytes after the UDP datagram (Ethernet minimum-frame padding)
	__u8 tos; // IPv4 TOS / IPv6 traffic class (DSCP + ECN), kept
};

// What to write: the new 5-tuple, which TURN framing goes in front of the payload, and where
// the payload lies in the old datagram.
enum framing { FRAMING_NONE, FRAMING_CHANNEL, FRAMING_DATA_INDICATION };

struct rewrite {
	struct in6_addr src;
	struct in6_addr dst;
	__be16 sport;
	__be16 dport;
	enum framing framing;
	__be16 channel;
	struct in6_addr peer_ip; // Data indication: XOR-PEER-ADDRESS
	__be16 peer_port;
	__u32 old_prefix; // bytes before the payload in the old UDP payload (multiple of 4)
	__u32 payload_len;
	__u32 old_suffix; // bytes after the payload in the old UDP payload
	__u64 old_extra_sum; // checksum sum of the old prefix and suffix bytes (removed)
	// Counter slots to charge: the sending allocation's (client -> peer) and the receiving
	// allocation's (peer -> client); both for two allocations of this tern talking.
	__u32 to_peer_slot;
	__u32 to_client_slot;
};

static __always_inline void count_outcome(__u32 outcome)
{
	__u64 *n = bpf_map_lookup_elem(&outcomes, &outcome);
	if (n)
		*n += 1;
}

static __always_inline void set_mapped_v4(struct in6_addr *a, __be32 v4)
{
	a->in6_u.u6_addr32[0] = 0;
	a->in6_u.u6_addr32[1] = 0;
	a->in6_u.u6_addr32[2] = bpf_htonl(0x0000ffff);
	a->in6_u.u6_addr32[3] = v4;
}

// Parses Ethernet + IPv4/IPv6 + UDP. 0: a UDP datagram we may handle; otherwise an outcome.
static __always_inline int parse_frame(void *data, void *data_end, struct frame *f)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return OUT_NOT_OURS;
	__u16 ip_payload_len;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return OUT_NOT_OURS;
		if (ip->protocol != IPPROTO_UDP)
			return OUT_NOT_OURS;
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return OUT_UNSUPPORTED; // options, or a fragment
		__u16 tot = bpf_ntohs(ip->tot_len);
		if (tot < sizeof(*ip))
			return OUT_UNSUPPORTED;
		ip_payload_len = tot - sizeof(*ip);
		set_mapped_v4(&f->src, ip->saddr);
		set_mapped_v4(&f->dst, ip->daddr);
		f->tos = ip->tos;
		f->l4_off = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return OUT_NOT_OURS;
		if (ip6->nexthdr != IPPROTO_UDP)
			return OUT_NOT_OURS; // extension headers included
		ip_payload_len = bpf_ntohs(ip6->payload_len);
		f->src = ip6->saddr;
		f->dst = ip6->daddr;
		f->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		f->l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return OUT_NOT_OURS;
	}
	struct udphdr *udp = data + f->l4_off;
	if ((void *)(udp + 1) > data_end)
		return OUT_NOT_OURS;
	__u16 udp_len = bpf_ntohs(udp->len);
	// The UDP length must match the IP length and the frame (no GRO/GSO aggregates, no trailers).
	if (udp_len != ip_payload_len || udp_len < sizeof(*udp) || udp_len > MAX_UDP_LEN)
		return OUT_UNSUPPORTED;
	__u32 frame_len = data_end - data;
	if (frame_len < f->l4_off + udp_len || frame_len - f->l4_off - udp_len >= MAX_TRAILER)
		return OUT_UNSUPPORTED;
	f->trailer = frame_len - f->l4_off - udp_len;
	f->sport = udp->source;
	f->dport = udp->dest;
	f->udp_len = udp_len;
	f->udp_check = udp->check;
	return 0;
}

// Checksum sum of `len` (at most MAX_PREFIX, a multiple of 4) bytes at frame offset `off`.
static __always_inline int sum_prefix(struct xdp_md *ctx, __u32 off, __u32 len, __u64 *sum)
{
	__u32 zero = 0;
	struct scratch *buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf)
		return -1;
	__builtin_memset(buf->words, 0, MAX_SEND_PREFIX);
	len = BOUNDED(len, MAX_SEND_PREFIX * 2 - 1);
	if (len == 0)
		return 0;
	if (len > MAX_SEND_PREFIX || bpf_xdp_load_bytes(ctx, off, buf->words, len))
		return -1;
#pragma unroll
	for (int i = 0; i < MAX_SEND_PREFIX / 4; i++) {
		__u32 v = bpf_ntohl(buf->words[i]);
		*sum += (v >> 16) + (v & 0xffff);
	}
	return 0;
}

// Checksum sum of the `len` (< MAX_SUFFIX) bytes that follow the payload, at frame offset `off`;
// `odd` says they start at an odd offset of the UDP header, so the first is a low byte.
static __always_inline int sum_suffix(struct xdp_md *ctx, __u32 off, __u32 len, int odd, __u64 *sum)
{
	__u8 buf[MAX_SUFFIX + 2] = {};
	len = BOUNDED(len, MAX_SUFFIX * 2 - 1);
	if (len == 0)
		return 0;
	if (len >= MAX_SUFFIX)
		return -1;
	if (odd ? bpf_xdp_load_bytes(ctx, off, &buf[1], len) : bpf_xdp_load_bytes(ctx, off, &buf[0], len))
		return -1;
#pragma unroll
	for (int i = 0; i < MAX_SUFFIX + 2; i += 2)
		*sum += ((__u32)buf[i] << 8) | buf[i + 1];
	return 0;
}

// Moves the `len` payload bytes at frame offset `at + shift` to `at` and zeroes the `shift` bytes
// left behind at the end: the padding of a Data indication when the tail cannot grow.
static __always_inline int move_payload(struct xdp_md *ctx, __u32 at, __u32 len, __u32 shift)
{
	__u32 zero = 0;
	struct scratch *buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf)
		return -1;
	len = BOUNDED(len, MAX_MOVE * 2 - 1);
	shift = BOUNDED(shift, 3);
	if (len == 0 || len > MAX_MOVE || shift == 0)
		return -1;
	if (bpf_xdp_load_bytes(ctx, at + shift, buf->bytes, len) ||
	    bpf_xdp_store_bytes(ctx, at, buf->bytes, len))
		return -1;
	__u32 zeros = 0;
	return bpf_xdp_store_bytes(ctx, at + len, &zeros, shift) ? -1 : 0;
}

// ---- Output ------------------------------------------------------------------------------------

static __always_inline __u32 framing_len(const struct rewrite *r)
{
	if (r->framing == FRAMING_CHANNEL)
		return CD_HEADER_LEN;
	if (r->framing == FRAMING_DATA_INDICATION)
		return STUN_HEADER_LEN + 4 + (is_v4(&r->peer_ip) ? 8 : 20) + 4;
	return 0;
}

// Writes the Data indication prefix (STUN header, XOR-PEER-ADDRESS, DATA header) in the `words`
// 32-bit words at `w` (9 for an IPv4 peer, 12 for IPv6) and returns their checksum sum.
static __always_inline __u64 write_data_indication(__be32 *w, const int words, const struct rewrite *r,
						   __u32 padded_len)
{
	w[0] = bpf_htonl((STUN_DATA_INDICATION << 16) | (words * 4 - STUN_HEADER_LEN + padded_len));
	w[1] = bpf_htonl(STUN_MAGIC_COOKIE);
	w[2] = bpf_get_prandom_u32(); // transaction id
	w[3] = bpf_get_prandom_u32();
	w[4] = bpf_get_prandom_u32();
	w[5] = bpf_htonl((ATTR_XOR_PEER_ADDRESS << 16) | (words * 4 - 28));
	w[6] = bpf_htonl(((words == 9 ? 1 : 2) << 16) | (bpf_ntohs(r->peer_port) ^ (STUN_MAGIC_COOKIE >> 16)));
	if (words == 9) {
		w[7] = r->peer_ip.in6_u.u6_addr32[3] ^ bpf_htonl(STUN_MAGIC_COOKIE);
	} else {
		w[7] = r->peer_ip.in6_u.u6_addr32[0] ^ bpf_htonl(STUN_MAGIC_COOKIE);
		w[8] = r->peer_ip.in6_u.u6_addr32[1] ^ w[2];
		w[9] = r->peer_ip.in6_u.u6_addr32[2] ^ w[3];
		w[10] = r->peer_ip.in6_u.u6_addr32[3] ^ w[4];
	}
	w[words - 1] = bpf_htonl((ATTR_DATA << 16) | r->payload_len);
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < words; i++) {
		__u32 v = bpf_ntohl(w[i]);
		s += (v >> 16) + (v & 0xffff);
	}
	return s;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

// Remembers how `ip` reached us: a packet from it for an installed entry came in on this
// interface from this neighbour. Written only when that changes, so not per packet.
static __always_inline void learn_hop(struct xdp_md *ctx, const struct in6_addr *ip)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return;
	if (eth->h_dest[0] & 1)
		return; // multicast or broadcast: not an address of ours to answer from
	__u32 ifindex = ctx->ingress_ifindex;
	struct hop *known = bpf_map_lookup_elem(&hops, ip);
	if (known && known->ifindex == ifindex && mac_eq(known->dmac, eth->h_source) &&
	    mac_eq(known->smac, eth->h_dest))
		return;
	struct hop fresh = { .ifindex = ifindex };
	__builtin_memcpy(fresh.dmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(fresh.smac, eth->h_dest, ETH_ALEN);
	bpf_map_update_elem(&hops, ip, &fresh, BPF_ANY);
}

static __always_inline void count_relayed(__u32 slot, int to_peer, __u32 bytes)
{
	struct counters *c = bpf_map_lookup_elem(&counters, &slot);
	if (c) {
		if (to_peer) {
			c->to_peer_packets += 1;
			c->to_peer_bytes += bytes;
		} else {
			c->to_client_packets += 1;
			c->to_client_bytes += bytes;
		}
	}
	__u32 zero = 0;
	struct counters *t = bpf_map_lookup_elem(&totals, &zero);
	if (t) {
		if (to_peer) {
			t->to_peer_packets += 1;
			t->to_peer_bytes += bytes;
		} else {
			t->to_client_packets += 1;
			t->to_client_bytes += bytes;
		}
	}
}

// How the rewritten packet leaves for `out`: XDP_TX back out of the interface it came in on,
// a redirect to another one. Veth is the exception: XDP_TX there wakes the other end only if
// that end runs an XDP program itself, so it is redirected to itself, which always does. A
// natively attached interface redirects only to another native one (a generic-only device
// cannot take frames from the driver path). -1: leave it to user space.
static __always_inline int egress(struct xdp_md *ctx, __u32 out)
{
	__u32 in = ctx->ingress_ifindex;
	__u32 *in_flags = bpf_map_lookup_elem(&interfaces, &in);
	if (!in_flags)
		return -1;
	if (out == in)
		return (*in_flags & INTERFACE_TX_BY_REDIRECT) ? bpf_redirect(out, 0) : XDP_TX;
	__u32 *out_flags = bpf_map_lookup_elem(&interfaces, &out);
	if (!out_flags)
		return -1;
	if ((*in_flags & INTERFACE_NATIVE) && !(*out_flags & INTERFACE_NATIVE))
		return -1;
	return bpf_redirect(out, 0);
}

// Rewrites the datagram per `r` and sends it toward the hop learned for its destination.
// Returns XDP_PASS (packet unchanged) when it cannot.
static __always_inline int relay(struct xdp_md *ctx, const struct frame *f, const struct rewrite *r)
{
	int out_v4 = is_v4(&r->dst);
	__u32 l3_len = out_v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 prefix = framing_len(r);
	__u32 padded = r->framing == FRAMING_DATA_INDICATION ? (r->payload_len + 3) & ~3u : r->payload_len;
	__u32 new_suffix = padded - r->payload_len;
	__u32 udp_len = sizeof(struct udphdr) + prefix + padded;
	if (udp_len > MAX_UDP_LEN) {
		count_outcome(OUT_UNSUPPORTED);
		return XDP_PASS;
	}

	if (f->udp_check == 0 && !out_v4) {
		count_outcome(OUT_NO_CHECKSUM);
		return XDP_PASS;
	}
	if (f->udp_check && partial_checksum(&f->src, &f->dst, f->udp_len, bpf_ntohs(f->udp_check))) {
		count_outcome(OUT_PARTIAL_CHECKSUM);
		return XDP_PASS;
	}

	struct hop *learned = bpf_map_lookup_elem(&hops, &r->dst);
	if (!learned) {
		count_outcome(OUT_NO_HOP);
		return XDP_PASS;
	}
	struct hop hop = *learned; // the map value may be replaced meanwhile
	__u32 mtu_len = l3_len + udp_len;
	if (bpf_check_mtu(ctx, hop.ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS) {
		count_outcome(OUT_TOO_BIG);
		return XDP_PASS;
	}
	int action = egress(ctx, hop.ifindex);
	if (action < 0) {
		count_outcome(OUT_NO_HOP);
		return XDP_PASS;
	}

	// The checksum: remove what goes, add what comes (the payload stays, same alignment).
	__u64 removed = sum_udp_frame(&f->src, &f->dst, f->sport, f->dport, f->udp_len) + r->old_extra_sum;
	__u64 added = sum_udp_frame(&r->src, &r->dst, r->sport, r->dport, udp_len);
	if (r->framing == FRAMING_CHANNEL)
		added += bpf_ntohs(r->channel) + r->payload_len;

	// Tail first: it is the step that may fail, and undoing it is easy. Frames backed by a socket
	// buffer (veth, generic XDP) may have no tailroom for a Data indication's padding; then the
	// head grows by the padding too and the payload moves toward it (same offset from the new UDP
	// header either way, so the checksum arithmetic holds).
	int tail_delta = (int)new_suffix - (int)r->old_suffix - (int)f->trailer;
	__u32 shift = 0;
	if (tail_delta && bpf_xdp_adjust_tail(ctx, tail_delta)) {
		if (tail_delta < 0 || tail_delta != (int)new_suffix || r->payload_len > MAX_MOVE) {
			count_outcome(OUT_ADJUST_FAILED);
			return XDP_PASS;
		}
		shift = tail_delta;
		tail_delta = 0;
	}
	int old_head = f->l4_off + sizeof(struct udphdr) + r->old_prefix;
	int new_head = sizeof(struct ethhdr) + l3_len + sizeof(struct udphdr) + prefix;
	if (bpf_xdp_adjust_head(ctx, old_head - new_head - (int)shift)) {
		if (tail_delta)
			bpf_xdp_adjust_tail(ctx, -tail_delta);
		count_outcome(OUT_ADJUST_FAILED);
		return XDP_PASS;
	}
	if (shift && move_payload(ctx, new_head, r->payload_len, shift)) {
		count_outcome(OUT_ADJUST_FAILED);
		return XDP_DROP; // the old headers are gone; cannot happen with the bounds above
	}

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	// Each write below is bounds-checked for the verifier; none can fail, as the new headers are
	// exactly as long as the head just made.

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, hop.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop.smac, ETH_ALEN);

	struct udphdr *udp;
	if (out_v4) {
		eth->h_proto = bpf_htons(ETH_P_IP);
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = f->tos;
		ip->tot_len = bpf_htons(l3_len + udp_len);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); // DF, as Linux sends UDP by default
		ip->ttl = HOP_LIMIT;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		ip->saddr = r->src.in6_u.u6_addr32[3];
		ip->daddr = r->dst.in6_u.u6_addr32[3];
		ip->check = ipv4_header_checksum(ip);
		udp = (void *)(ip + 1);
	} else {
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		*(__be32 *)ip6 = bpf_htonl((6u << 28) | ((__u32)f->tos << 20));
		ip6->payload_len = bpf_htons(udp_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = HOP_LIMIT;
		ip6->saddr = r->src;
		ip6->daddr = r->dst;
		udp = (void *)(ip6 + 1);
	}
	if ((void *)(udp + 1) > data_end)
		return XDP_DROP;
	udp->source = r->sport;
	udp->dest = r->dport;
	udp->len = bpf_htons(udp_len);

	__u8 *framing = (void *)(udp + 1);
	if (r->framing == FRAMING_CHANNEL) {
		if ((void *)(framing + CD_HEADER_LEN) > data_end)
			return XDP_DROP;
		*(__be16 *)framing = r->channel;
		*(__be16 *)(framing + 2) = bpf_htons(r->payload_len);
	} else if (r->framing == FRAMING_DATA_INDICATION && prefix == 36) {
		if ((void *)(framing + 36) > data_end)
			return XDP_DROP;
		added += write_data_indication((__be32 *)framing, 9, r, padded);
	} else if (r->framing == FRAMING_DATA_INDICATION) {
		if ((void *)(framing + 48) > data_end)
			return XDP_DROP;
		added += write_data_indication((__be32 *)framing, 12, r, padded);
	}

	if (f->udp_check == 0) {
		udp->check = 0; // IPv4 without checksum stays without (out_v4 here)
	} else {
		__u64 acc = (__u16)~bpf_ntohs(f->udp_check);
		acc += (__u16)~fold(removed);
		acc += added;
		__u16 check = ~fold(acc);
		udp->check = bpf_htons(check ? check : 0xffff);
	}

	if (r->to_peer_slot != NO_SLOT)
		count_relayed(r->to_peer_slot, 1, r->payload_len);
	if (r->to_client_slot != NO_SLOT)
		count_relayed(r->to_client_slot, 0, r->payload_len);
	count_outcome(OUT_RELAYED);
	return action;
}

// ---- Client side: ChannelData and Send indications ---------------------------------------------

// A ChannelData message on a known channel: its route, with `r` filled toward the peer.
static __always_inline struct to_peer *from_client_channel(struct xdp_md *ctx, void *data, void *data_end,
							    const struct frame *f, struct rewrite *r)
{
	__u32 start = f->l4_off + sizeof(struct udphdr);
	__u8 *cd = data + BOUNDED(start, 0xff);
	if ((void *)(cd + CD_HEADER_LEN) > data_end)
		return NULL;
	__u16 channel = ((__u16)cd[0] << 8) | cd[1];
	__u16 len = ((__u16)cd[2] << 8) | cd[3];
	__u32 udp_payload = f->udp_len - sizeof(struct udphdr);
	// Over UDP the padding to a multiple of 4 is optional; more than 3 extra bytes is malformed.
	if (channel < CHANNEL_MIN || channel > CHANNEL_MAX || CD_HEADER_LEN + len > udp_payload ||
	    udp_payload - CD_HEADER_LEN - len > 3)
		return NULL;

	struct client_key key = {};
	key.client_ip = f->src;
	key.server_ip = f->dst;
	key.client_port = f->sport;
	key.server_port = f->dport;
	key.channel = bpf_htons(channel);
	struct to_peer *route = bpf_map_lookup_elem(&from_client, &key);
	if (!route)
		return NULL;

	r->src = route->relay_ip;
	r->sport = route->relay_port;
	r->dst = route->peer_ip;
	r->dport = route->peer_port;
	r->framing = FRAMING_NONE;
	r->old_prefix = CD_HEADER_LEN;
	r->payload_len = len;
	r->old_suffix = udp_payload - CD_HEADER_LEN - len;
	r->old_extra_sum = channel + len;
	r->to_peer_slot = route->slot;
	r->to_client_slot = NO_SLOT;
	__u32 end = CD_HEADER_LEN + len;
	if (sum_suffix(ctx, start + end, r->old_suffix, end & 1, &r->old_extra_sum))
		return NULL;
	return route;
}

static __always_inline __u32 be32_at(__u8 *p)
{
	return ((__u32)p[0] << 24) | ((__u32)p[1] << 16) | ((__u32)p[2] << 8) | p[3];
}

// A Send indication to a permitted peer: its route, with `r` filled toward the peer.
static __always_inline struct to_peer *from_client_send(struct xdp_md *ctx, void *data, void *data_end,
							 const struct frame *f, struct rewrite *r)
{
	__u32 start = f->l4_off + sizeof(struct udphdr);
	__u8 *stun = data + BOUNDED(start, 0xff);
	if ((void *)(stun + STUN_HEADER_LEN) > data_end)
		return NULL;
	__u32 udp_payload = f->udp_len - sizeof(struct udphdr);
	__u32 word0 = be32_at(stun);
	if ((word0 >> 16) != STUN_SEND_INDICATION || (word0 & 0xffff) + STUN_HEADER_LEN != udp_payload ||
	    be32_at(stun + 4) != STUN_MAGIC_COOKIE)
		return NULL;

	// The first XOR-PEER-ADDRESS and the first DATA, as user space reads them; other attributes
	// are skipped (a Send indication is not authenticated, and user space ignores them too).
	struct in6_addr peer_ip = {};
	__u16 peer_port = 0;
	int have_peer = 0;
	__u32 data_off = 0, data_len = 0;
	__u32 off = STUN_HEADER_LEN;
	for (int i = 0; i < MAX_ATTRS; i++) {
		if (off + 4 > udp_payload || off > MAX_SEND_PREFIX)
			return NULL;
		__u8 *attr = stun + BOUNDED(off, 0xff);
		if ((void *)(attr + 4) > data_end)
			return NULL;
		__u16 type = ((__u16)attr[0] << 8) | attr[1];
		__u16 alen = ((__u16)attr[2] << 8) | attr[3];
		if (off + 4 + alen > udp_payload)
			return NULL;
		if (type == ATTR_XOR_PEER_ADDRESS && !have_peer) {
			if ((void *)(attr + 4 + 8) > data_end)
				return NULL;
			__u8 family = attr[5];
			peer_port = (((__u16)attr[6] << 8) | attr[7]) ^ (STUN_MAGIC_COOKIE >> 16);
			if (family == 1 && alen == 8) {
				set_mapped_v4(&peer_ip, *(__be32 *)(attr + 8) ^ bpf_htonl(STUN_MAGIC_COOKIE));
			} else if (family == 2 && alen == 20) {
				if ((void *)(attr + 4 + 20) > data_end)
					return NULL;
				peer_ip.in6_u.u6_addr32[0] = *(__be32 *)(attr + 8) ^ bpf_htonl(STUN_MAGIC_COOKIE);
				peer_ip.in6_u.u6_addr32[1] = *(__be32 *)(attr + 12) ^ *(__be32 *)(stun + 8);
				peer_ip.in6_u.u6_addr32[2] = *(__be32 *)(attr + 16) ^ *(__be32 *)(stun + 12);
				peer_ip.in6_u.u6_addr32[3] = *(__be32 *)(attr + 20) ^ *(__be32 *)(stun + 16);
			} else {
				return NULL;
			}
			have_peer = 1;
		} else if (type == ATTR_DATA) {
			// DATA comes after XOR-PEER-ADDRESS in every client seen; otherwise user space.
			if (!have_peer)
				return NULL;
			data_off = off + 4;
			data_len = alen;
			break;
		}
		off += 4 + ((alen + 3) & ~3u);
	}
	if (data_off == 0 || peer_port == 0 || data_off > MAX_SEND_PREFIX)
		return NULL;
	__u32 suffix = udp_payload - data_off - data_len;

	struct client_key key = {};
	key.client_ip = f->src;
	key.server_ip = f->dst;
	key.client_port = f->sport;
	key.server_port = f->dport;
	key.peer_ip = peer_ip;
	struct to_peer *route = bpf_map_lookup_elem(&from_client, &key);
	if (!route)
		return NULL;

	r->src = route->relay_ip;
	r->sport = route->relay_port;
	r->dst = peer_ip;
	r->dport = bpf_htons(peer_port);
	r->framing = FRAMING_NONE;
	r->old_prefix = data_off;
	r->payload_len = data_len;
	r->old_suffix = suffix;
	r->to_peer_slot = route->slot;
	r->to_client_slot = NO_SLOT;
	__u32 end = data_off + data_len;
	if (sum_prefix(ctx, start, data_off, &r->old_extra_sum) ||
	    sum_suffix(ctx, start + end, suffix, end & 1, &r->old_extra_sum))
		return NULL;
	return route;
}

// ---- Toward a client: from a peer, or from another allocation of this tern -------------------------

static __always_inline int is_zero(const struct in6_addr *a)
{
	return (a->in6_u.u6_addr32[0] | a->in6_u.u6_addr32[1] | a->in6_u.u6_addr32[2] |
		a->in6_u.u6_addr32[3]) == 0;
}

// The client entry for a datagram from `key.peer` to `key.relay`: a channel to that peer port,
// else a permission for the peer's address (for one of tern's own addresses, from a relay-range
// port only, as user space judges it).
static __always_inline struct to_client *lookup_to_client(struct peer_key *key)
{
	struct to_client *back = bpf_map_lookup_elem(&from_peer, key);
	if (back)
		return back;
	__u16 port = bpf_ntohs(key->peer_port);
	key->peer_port = 0;
	back = bpf_map_lookup_elem(&from_peer, key);
	if (!back || back->channel)
		return NULL;
	if ((back->flags & TO_CLIENT_RELAY_PORTS_ONLY) && (port < relay_port_min || port > relay_port_max))
		return NULL;
	return back;
}

// Aims `r` at the client of `back`, framing the payload as coming from `peer_ip`:`peer_port`.
static __always_inline void toward_client(const struct to_client *back, struct rewrite *r,
					  const struct in6_addr *peer_ip, __be16 peer_port)
{
	r->src = back->server_ip;
	r->sport = back->server_port;
	r->dst = back->client_ip;
	r->dport = back->client_port;
	r->framing = back->channel ? FRAMING_CHANNEL : FRAMING_DATA_INDICATION;
	r->channel = back->channel;
	r->peer_ip = *peer_ip;
	r->peer_port = peer_port;
	r->to_client_slot = back->slot;
}

// Client data for another allocation's relay address on this tern: straight to that
// allocation's client, if it has a channel or permission for this allocation's relay address
// (as it sees it). 0 when it has.
static __always_inline int loop_to_client(const struct to_peer *route, struct rewrite *r)
{
	struct peer_key key = {};
	key.relay_ip = route->loop_relay_ip;
	key.relay_port = r->dport;
	key.peer_ip = route->loop_self_ip;
	key.peer_port = route->relay_port;
	struct to_client *back = lookup_to_client(&key);
	if (!back)
		return -1;
	toward_client(back, r, &route->loop_self_ip, route->relay_port);
	return 0;
}

// A datagram from a peer with a channel (ChannelData) or a permission (Data indication).
static __always_inline int from_peer_udp(struct xdp_md *ctx, const struct frame *f, struct rewrite *r)
{
	struct peer_key key = {};
	key.relay_ip = f->dst;
	key.relay_port = f->dport;
	key.peer_ip = f->src;
	key.peer_port = f->sport;
	struct to_client *back = lookup_to_client(&key);
	if (!back)
		return -1;
	learn_hop(ctx, &f->src);
	toward_client(back, r, &f->src, f->sport);
	r->old_prefix = 0;
	r->payload_len = f->udp_len - sizeof(struct udphdr);
	r->old_suffix = 0;
	r->old_extra_sum = 0;
	r->to_peer_slot = NO_SLOT;
	return 0;
}

SEC("xdp")
int tern_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct frame f = {};
	int outcome = parse_frame(data, data_end, &f);
	if (outcome) {
		count_outcome(outcome);
		return XDP_PASS;
	}

	struct rewrite r = {};
	struct to_peer *route = NULL;
	__u8 *first = data + BOUNDED(f.l4_off, 0xff) + sizeof(struct udphdr);
	if ((void *)(first + 1) <= data_end) {
		if ((*first & 0xc0) == 0x40)
			route = from_client_channel(ctx, data, data_end, &f, &r);
		else if (*first == 0x00)
			route = from_client_send(ctx, data, data_end, &f, &r);
	}
	if (route) {
		learn_hop(ctx, &f.src);
		if (!is_zero(&route->loop_relay_ip) && loop_to_client(route, &r)) {
			count_outcome(OUT_NOT_OURS); // the other allocation does not take it: user space
			return XDP_PASS;
		}
		return relay(ctx, &f, &r);
	}
	if (from_peer_udp(ctx, &f, &r)) {
		count_outcome(OUT_NOT_OURS);
		return XDP_PASS;
	}
	return relay(ctx, &f, &r);
}
