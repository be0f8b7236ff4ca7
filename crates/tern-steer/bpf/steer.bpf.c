// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// tern's UDP worker steering: an SK_REUSEPORT program on one listening address's reuseport group
// (one listener socket per worker). For each datagram it picks the worker socket:
//
//   1. a client 5-tuple in `owners` (it has an allocation) goes to the worker that owns it, always:
//      that worker holds the allocation's state and relay socket;
//   2. any other goes to the first worker whose published load (`loads`, datagrams per second) is
//      under the budget (`settings`), so a light load stays on few workers and wakes fewer threads;
//   3. when every worker is over the budget, or anything fails, the program selects nothing and
//      the kernel's reuseport hash picks, as without the program.
//
// Maps are created by user space (src/lib.rs) and bound to this object's map references by name;
// the definitions below only document their shapes.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Mirrored in src/lib.rs (MAX_WORKERS, Flow, Settings).
#define MAX_WORKERS 64

struct flow {
	__u32 family;       // 4 or 6
	__be16 client_port;
	__be16 server_port;
	__u8 client_ip[16]; // IPv4: the first 4 bytes, the rest zero
	__u8 server_ip[16];
};

struct settings {
	__u32 workers;
	__u32 pad;
	__u64 budget; // datagrams per second a worker takes new clients up to
};

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct flow);
	__type(value, __u32);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} loads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

// The first worker under the budget, or -1.
static __always_inline int first_under_budget(void)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings, &zero);
	if (!s)
		return -1;
	for (__u32 i = 0; i < MAX_WORKERS; i++) {
		if (i >= s->workers)
			break;
		__u32 key = i;
		__u64 *load = bpf_map_lookup_elem(&loads, &key);
		if (load && *load < s->budget)
			return (int)i;
	}
	return -1;
}

SEC("sk_reuseport")
int steer(struct sk_reuseport_md *ctx)
{
	struct flow flow = {};
	if (ctx->eth_protocol == bpf_htons(ETH_P_IP)) {
		flow.family = 4;
		if (bpf_skb_load_bytes_relative(ctx, offsetof(struct iphdr, saddr), flow.client_ip, 4,
						BPF_HDR_START_NET) ||
		    bpf_skb_load_bytes_relative(ctx, offsetof(struct iphdr, daddr), flow.server_ip, 4,
						BPF_HDR_START_NET))
			return SK_PASS;
	} else if (ctx->eth_protocol == bpf_htons(ETH_P_IPV6)) {
		flow.family = 6;
		if (bpf_skb_load_bytes_relative(ctx, offsetof(struct ipv6hdr, saddr), flow.client_ip, 16,
						BPF_HDR_START_NET) ||
		    bpf_skb_load_bytes_relative(ctx, offsetof(struct ipv6hdr, daddr), flow.server_ip, 16,
						BPF_HDR_START_NET))
			return SK_PASS;
	} else {
		return SK_PASS;
	}
	// The data starts at the UDP header: source port, then destination port.
	__be16 ports[2];
	if (bpf_skb_load_bytes(ctx, 0, ports, sizeof(ports)))
		return SK_PASS;
	flow.client_port = ports[0];
	flow.server_port = ports[1];

	__u32 worker;
	__u32 *owner = bpf_map_lookup_elem(&owners, &flow);
	if (owner) {
		worker = *owner;
	} else {
		int pick = first_under_budget();
		if (pick < 0)
			return SK_PASS;
		worker = (__u32)pick;
	}
	// On failure (no socket at that index) nothing is selected: the kernel's hash picks.
	bpf_sk_select_reuseport(ctx, &sockets, &worker, 0);
	return SK_PASS;
}
