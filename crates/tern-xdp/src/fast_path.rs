//! Loading, attaching and feeding the XDP program.

use crate::maps::{self, ClientKey, PeerKey, RawCounters, ToClient, ToPeer};
use crate::{ClientTuple, Counters, EntryId, InstallError, Mode, Outcomes, Unavailable};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};
use std::collections::HashMap as StdHashMap;
use std::net::{IpAddr, SocketAddr};

const PROGRAM: &str = "tern_relay";

/// How the program is attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before any socket buffer exists: the fast one.
    Native,
    /// On the socket buffer (`xdpgeneric`), where the driver has no XDP support (e.g. `lo`).
    Generic,
}

/// The object clang built, or why there is none.
fn object() -> Result<&'static [u8], Unavailable> {
    #[cfg(tern_xdp_built)]
    {
        Ok(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/relay.bpf.o"
        )))
    }
    #[cfg(not(tern_xdp_built))]
    {
        Err(Unavailable::NotBuilt(env!("TERN_XDP_NOT_BUILT")))
    }
}

/// Whether this build carries the program (clang and the BPF headers were there).
pub fn built() -> bool {
    object().is_ok()
}

/// What one installed entry put in the maps, to take it out again.
struct Entry {
    client_key: ClientKey,
    peer_key: PeerKey,
    generation: u32,
}

/// The attached program and its maps. User space stays the authority: an entry exists only while
/// the caller keeps the channel or permission alive, and dropping this detaches everything.
pub struct FastPath {
    // Maps first: fields drop in order, and the program (with its links) goes last.
    from_client: HashMap<MapData, ClientKey, ToPeer>,
    from_peer: HashMap<MapData, PeerKey, ToClient>,
    counters: PerCpuArray<MapData, RawCounters>,
    outcomes: PerCpuArray<MapData, u64>,
    /// Entries by slot (the index into `counters`); `None` is free.
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_key: StdHashMap<ClientKey, EntryId>,
    next_generation: u32,
    cpus: usize,
    attached: Vec<(String, AttachMode)>,
    links: Vec<aya::programs::xdp::XdpLinkId>,
    ebpf: Ebpf,
}

impl FastPath {
    /// Per `mode`: `Off` gives `None`; `Auto` gives `None` with one warning line when the kernel,
    /// the capabilities or the build do not allow the fast path; `Required` gives the reason as
    /// an error.
    pub fn start(
        mode: Mode,
        interfaces: &[&str],
        capacity: u32,
    ) -> Result<Option<FastPath>, Unavailable> {
        match mode {
            Mode::Off => Ok(None),
            Mode::Required => Self::attach(interfaces, capacity).map(Some),
            Mode::Auto => match Self::attach(interfaces, capacity) {
                Ok(fast_path) => Ok(Some(fast_path)),
                Err(reason) => {
                    tracing::warn!("fast path off, relaying in user space: {reason}");
                    Ok(None)
                }
            },
        }
    }

    /// Loads the program with maps for `capacity` entries (channels plus permissions) and
    /// attaches it to each interface: natively where the driver can, generically otherwise.
    pub fn attach(interfaces: &[&str], capacity: u32) -> Result<FastPath, Unavailable> {
        let object = object()?;
        if capacity == 0 {
            return Err(Unavailable::Load("capacity must be at least 1".into()));
        }
        for interface in interfaces {
            check_forwarding(interface)?;
        }
        let mut ebpf = EbpfLoader::new()
            .set_max_entries(maps::FROM_CLIENT, capacity)
            .set_max_entries(maps::FROM_PEER, capacity)
            .set_max_entries(maps::COUNTERS, capacity)
            .load(object)
            .map_err(|e| Unavailable::from_load_error(&e))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| Unavailable::Load(format!("no program {PROGRAM} in the object")))?
            .try_into()
            .map_err(|e| Unavailable::from_load_error(&e))?;
        program
            .load()
            .map_err(|e| Unavailable::from_load_error(&e))?;

        let mut links = Vec::new();
        let mut attached = Vec::new();
        for interface in interfaces {
            let (link, mode) = match program.attach(interface, XdpFlags::DRV_MODE) {
                Ok(link) => (link, AttachMode::Native),
                Err(native) => match program.attach(interface, XdpFlags::SKB_MODE) {
                    Ok(link) => (link, AttachMode::Generic),
                    Err(generic) => {
                        // Links made so far go with the program when `ebpf` drops.
                        return Err(Unavailable::Attach {
                            interface: interface.to_string(),
                            reason: format!(
                                "native: {}; generic: {}",
                                crate::error_chain(&native),
                                crate::error_chain(&generic)
                            ),
                        });
                    }
                },
            };
            tracing::info!(interface, ?mode, "fast path attached");
            links.push(link);
            attached.push((interface.to_string(), mode));
        }

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Unavailable::Load(format!("no map {name} in the object")))
        };
        let map_error = |e: aya::maps::MapError| Unavailable::from_load_error(&e);
        let from_client =
            HashMap::try_from(take(&mut ebpf, maps::FROM_CLIENT)?).map_err(map_error)?;
        let from_peer = HashMap::try_from(take(&mut ebpf, maps::FROM_PEER)?).map_err(map_error)?;
        let counters =
            PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?).map_err(map_error)?;
        let outcomes =
            PerCpuArray::try_from(take(&mut ebpf, maps::OUTCOMES)?).map_err(map_error)?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| Unavailable::Load(format!("{what}: {e}")))?;
        Ok(FastPath {
            from_client,
            from_peer,
            counters,
            outcomes,
            entries: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            by_key: StdHashMap::new(),
            next_generation: 0,
            cpus,
            attached,
            links,
            ebpf,
        })
    }

    /// The interfaces the program is attached to, and how.
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }

    /// How many entries are installed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Relays ChannelData on `channel` from the client of `tuple` to `peer` (from `relay`, the
    /// allocation's relay address of `peer`'s family) and `peer`'s datagrams to `relay` back to
    /// the client as ChannelData. Installing the same channel again returns the same entry.
    pub fn install_channel(
        &mut self,
        tuple: ClientTuple,
        channel: u16,
        relay: SocketAddr,
        peer: SocketAddr,
    ) -> Result<EntryId, InstallError> {
        if !(0x4000..=0x4FFF).contains(&channel) {
            return Err(InstallError::BadChannel(channel));
        }
        let client_key = ClientKey::new(tuple.client, tuple.server, channel, None);
        let peer_key = PeerKey::new(relay, peer.ip(), peer.port());
        let to_peer = |slot| ToPeer {
            relay_ip: maps::ip_bytes(relay.ip()),
            peer_ip: maps::ip_bytes(peer.ip()),
            relay_port: relay.port().to_be_bytes(),
            peer_port: peer.port().to_be_bytes(),
            slot,
        };
        self.install(
            tuple,
            relay,
            peer.ip(),
            client_key,
            peer_key,
            to_peer,
            channel,
        )
    }

    /// Relays Send indications from the client of `tuple` to any port of `peer` (from `relay`)
    /// and datagrams from any port of `peer` to `relay` back as Data indications, unless a
    /// channel to that peer port exists (which then wins).
    pub fn install_permission(
        &mut self,
        tuple: ClientTuple,
        relay: SocketAddr,
        peer: IpAddr,
    ) -> Result<EntryId, InstallError> {
        let client_key = ClientKey::new(tuple.client, tuple.server, 0, Some(peer));
        let peer_key = PeerKey::new(relay, peer, 0);
        let to_peer = |slot| ToPeer {
            relay_ip: maps::ip_bytes(relay.ip()),
            peer_ip: [0; 16],
            relay_port: relay.port().to_be_bytes(),
            peer_port: [0; 2],
            slot,
        };
        self.install(tuple, relay, peer, client_key, peer_key, to_peer, 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        tuple: ClientTuple,
        relay: SocketAddr,
        peer: IpAddr,
        client_key: ClientKey,
        peer_key: PeerKey,
        to_peer: impl Fn(u32) -> ToPeer,
        channel: u16,
    ) -> Result<EntryId, InstallError> {
        if relay.is_ipv4() != peer.is_ipv4() {
            return Err(InstallError::FamilyMismatch { relay, peer });
        }
        if let Some(&id) = self.by_key.get(&client_key) {
            let entry = self.entry(id)?;
            if entry.peer_key != peer_key {
                return Err(InstallError::Conflict);
            }
            return Ok(id);
        }
        let slot = self.free.pop().ok_or(InstallError::Full {
            capacity: self.entries.len(),
        })?;
        // A fresh slot starts from zero (a removed entry's last packets may have landed late).
        let zero = PerCpuValues::try_from(vec![RawCounters::default(); self.cpus])
            .map_err(InstallError::kernel)
            .and_then(|zero| {
                self.counters
                    .set(slot, zero, 0)
                    .map_err(InstallError::kernel)
            });
        let to_client = ToClient {
            client_ip: maps::ip_bytes(tuple.client.ip()),
            server_ip: maps::ip_bytes(tuple.server.ip()),
            client_port: tuple.client.port().to_be_bytes(),
            server_port: tuple.server.port().to_be_bytes(),
            channel: channel.to_be_bytes(),
            pad: 0,
            slot,
        };
        let inserted = zero
            .and_then(|()| {
                self.from_peer
                    .insert(peer_key, to_client, aya_flags::NOEXIST)
                    .map_err(InstallError::kernel)
            })
            .and_then(|()| {
                self.from_client
                    .insert(client_key, to_peer(slot), aya_flags::NOEXIST)
                    .map_err(|e| {
                        let _ = self.from_peer.remove(&peer_key);
                        InstallError::kernel(e)
                    })
            });
        if let Err(e) = inserted {
            self.free.push(slot);
            return Err(match e {
                InstallError::Full { .. } => InstallError::Full {
                    capacity: self.entries.len(),
                },
                other => other,
            });
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let id = EntryId {
            slot,
            generation: self.next_generation,
        };
        self.entries[slot as usize] = Some(Entry {
            client_key,
            peer_key,
            generation: id.generation,
        });
        self.by_key.insert(client_key, id);
        Ok(id)
    }

    fn entry(&self, id: EntryId) -> Result<&Entry, InstallError> {
        match self.entries.get(id.slot as usize) {
            Some(Some(entry)) if entry.generation == id.generation => Ok(entry),
            _ => Err(InstallError::UnknownEntry),
        }
    }

    /// Takes the entry out of the kernel: from now on its traffic goes to user space. Returns
    /// what the kernel relayed for it, to fold into metrics and quotas.
    pub fn remove(&mut self, id: EntryId) -> Result<Counters, InstallError> {
        let entry = self.entry(id)?;
        let (client_key, peer_key) = (entry.client_key, entry.peer_key);
        let removed_client = self.from_client.remove(&client_key);
        let removed_peer = self.from_peer.remove(&peer_key);
        let counters = self.counters(id);
        self.entries[id.slot as usize] = None;
        self.by_key.remove(&client_key);
        self.free.push(id.slot);
        removed_client.map_err(InstallError::kernel)?;
        removed_peer.map_err(InstallError::kernel)?;
        counters
    }

    /// What the kernel relayed for this entry so far, summed over CPUs.
    pub fn counters(&self, id: EntryId) -> Result<Counters, InstallError> {
        self.entry(id)?;
        let values = self
            .counters
            .get(&id.slot, 0)
            .map_err(InstallError::kernel)?;
        Ok(values.iter().fold(Counters::default(), |sum, c| Counters {
            to_peer_packets: sum.to_peer_packets + c.to_peer_packets,
            to_peer_bytes: sum.to_peer_bytes + c.to_peer_bytes,
            to_client_packets: sum.to_client_packets + c.to_client_packets,
            to_client_bytes: sum.to_client_bytes + c.to_client_bytes,
        }))
    }

    /// Why packets took the path they took, summed over CPUs since attach.
    pub fn outcomes(&self) -> Outcomes {
        let read = |index: u32| {
            self.outcomes
                .get(&index, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        Outcomes {
            relayed: read(0),
            not_ours: read(1),
            unsupported: read(2),
            no_route: read(3),
            no_checksum: read(4),
            adjust_failed: read(5),
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        if let Some(Ok(program)) = self.ebpf.program_mut(PROGRAM).map(<&mut Xdp>::try_from) {
            for link in self.links.drain(..) {
                if let Err(e) = program.detach(link) {
                    tracing::warn!("fast path detach failed: {}", crate::error_chain(&e));
                }
            }
        }
        tracing::info!("fast path detached");
    }
}

/// Map update flags (`BPF_NOEXIST`).
mod aya_flags {
    pub const NOEXIST: u64 = 1;
}

/// The kernel's FIB lookup helper, which finds the next hop for a rewritten packet, refuses to
/// work on an interface that does not forward; without it every packet would go to user space.
fn check_forwarding(interface: &str) -> Result<(), Unavailable> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        match std::fs::read_to_string(&path) {
            Ok(value) if value.trim() == "1" => {}
            Ok(_) => {
                return Err(Unavailable::ForwardingDisabled {
                    sysctl: format!("net.{family}.conf.{interface}.forwarding"),
                })
            }
            // No IPv6 on this interface (or no such interface: attach says so better).
            Err(_) => {}
        }
    }
    Ok(())
}
