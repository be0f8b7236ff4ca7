//! Loading, attaching and feeding the XDP program.

use crate::maps::{self, ClientKey, PeerKey, RawCounters, ToClient, ToPeer};
use crate::{
    AttachPolicy, ClientTuple, Counters, Entry, EntryId, EntryKind, InstallError, Mode, Outcomes,
    Settings, Unavailable,
};
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
    /// On the socket buffer (`xdpgeneric`), where the driver has no XDP support.
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
struct Installed {
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
    totals: PerCpuArray<MapData, RawCounters>,
    outcomes: PerCpuArray<MapData, u64>,
    /// Entries by slot (the index into `counters`); `None` is free.
    entries: Vec<Option<Installed>>,
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
    /// the capabilities, the interfaces or the build do not allow the fast path; `Required`
    /// gives the reason as an error.
    pub fn start(mode: Mode, settings: &Settings) -> Result<Option<FastPath>, Unavailable> {
        match mode {
            Mode::Off => Ok(None),
            Mode::Required => Self::attach(settings).map(Some),
            Mode::Auto => match Self::attach(settings) {
                Ok(fast_path) => Ok(Some(fast_path)),
                Err(reason) => {
                    tracing::warn!("fast path off, relaying in user space: {reason}");
                    Ok(None)
                }
            },
        }
    }

    /// Loads the program with maps for `settings.capacity` entries and attaches it to each
    /// interface: natively where the driver can, generically otherwise.
    pub fn attach(settings: &Settings) -> Result<FastPath, Unavailable> {
        let object = object()?;
        let capacity = settings.capacity;
        if capacity == 0 {
            return Err(Unavailable::Load("capacity must be at least 1".into()));
        }
        if settings.interfaces.is_empty() {
            return Err(Unavailable::NoInterface);
        }
        let mut indexes = Vec::new();
        for interface in &settings.interfaces {
            let index = interface_index(interface)?;
            if is_loopback(interface) {
                return Err(Unavailable::Loopback(interface.clone()));
            }
            if !is_ethernet(interface) {
                return Err(Unavailable::Attach {
                    interface: interface.clone(),
                    reason: "not an Ethernet interface (the program reads Ethernet frames)".into(),
                });
            }
            indexes.push(index);
        }
        let (min_port, max_port) = (*settings.relay_ports.start(), *settings.relay_ports.end());
        // Two addresses per entry at most (client and peer); shared ones take less.
        let hops = capacity.saturating_mul(2).max(64);
        let mut ebpf = EbpfLoader::new()
            .set_max_entries(maps::FROM_CLIENT, capacity)
            .set_max_entries(maps::FROM_PEER, capacity)
            .set_max_entries(maps::COUNTERS, capacity)
            .set_max_entries(maps::HOPS, hops)
            .set_global(maps::RELAY_PORT_MIN, &min_port, true)
            .set_global(maps::RELAY_PORT_MAX, &max_port, true)
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
        for interface in &settings.interfaces {
            let veth = driver(interface).as_deref() == Some("veth");
            let try_native = match settings.attach {
                AttachPolicy::Auto => !veth,
                AttachPolicy::Native => true,
                AttachPolicy::Generic => false,
            };
            let native = try_native.then(|| program.attach(interface, XdpFlags::DRV_MODE));
            let (link, mode) = match native {
                Some(Ok(link)) => (link, AttachMode::Native),
                native => match program.attach(interface, XdpFlags::SKB_MODE) {
                    Ok(link) => (link, AttachMode::Generic),
                    Err(generic) => {
                        let native = match native {
                            Some(Err(e)) => crate::error_chain(&e),
                            _ => "not tried".into(),
                        };
                        // Links made so far go with the program when `ebpf` drops.
                        return Err(Unavailable::Attach {
                            interface: interface.to_string(),
                            reason: format!(
                                "native: {native}; generic: {}",
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
        let mut interfaces: HashMap<MapData, u32, u32> =
            HashMap::try_from(take(&mut ebpf, maps::INTERFACES)?).map_err(map_error)?;
        for ((interface, mode), index) in attached.iter().zip(&indexes) {
            let mut flags = 0;
            if *mode == AttachMode::Native {
                flags |= maps::INTERFACE_NATIVE;
                if driver(interface).as_deref() == Some("veth") {
                    // XDP_TX on a veth wakes the other end only if that end runs an XDP program;
                    // a redirect to itself always does (the other end still needs GRO on or a
                    // program to take the frames at all).
                    flags |= maps::INTERFACE_TX_BY_REDIRECT;
                }
            }
            interfaces.insert(index, flags, 0).map_err(map_error)?;
        }
        let from_client =
            HashMap::try_from(take(&mut ebpf, maps::FROM_CLIENT)?).map_err(map_error)?;
        let from_peer = HashMap::try_from(take(&mut ebpf, maps::FROM_PEER)?).map_err(map_error)?;
        let counters =
            PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?).map_err(map_error)?;
        let totals = PerCpuArray::try_from(take(&mut ebpf, maps::TOTALS)?).map_err(map_error)?;
        let outcomes =
            PerCpuArray::try_from(take(&mut ebpf, maps::OUTCOMES)?).map_err(map_error)?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| Unavailable::Load(format!("{what}: {e}")))?;
        Ok(FastPath {
            from_client,
            from_peer,
            counters,
            totals,
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

    /// How many entries the maps hold at most.
    pub fn capacity(&self) -> usize {
        self.entries.len()
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
        self.install(&Entry {
            tuple,
            relay,
            kind: EntryKind::Channel {
                number: channel,
                peer,
            },
            relay_ports_only: false,
            loopback: None,
        })
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
        self.install(&Entry {
            tuple,
            relay,
            kind: EntryKind::Permission { peer },
            relay_ports_only: false,
            loopback: None,
        })
    }

    /// Installs `entry`. Installing the same channel or permission again (same client, same
    /// channel number or peer address) returns the entry there is, if it goes to the same place.
    pub fn install(&mut self, entry: &Entry) -> Result<EntryId, InstallError> {
        let Entry {
            tuple,
            relay,
            kind,
            relay_ports_only,
            loopback,
        } = *entry;
        let peer_ip = kind.peer_ip();
        if relay.is_ipv4() != peer_ip.is_ipv4() {
            return Err(InstallError::FamilyMismatch {
                relay,
                peer: peer_ip,
            });
        }
        let (client_key, peer_key, channel, peer) = match kind {
            EntryKind::Channel { number, peer } => {
                if !(0x4000..=0x4FFF).contains(&number) {
                    return Err(InstallError::BadChannel(number));
                }
                let client_key = ClientKey::new(tuple.client, tuple.server, number, None);
                let peer_key = PeerKey::new(relay, peer.ip(), peer.port());
                (client_key, peer_key, number, Some(peer))
            }
            EntryKind::Permission { peer } => {
                let client_key = ClientKey::new(tuple.client, tuple.server, 0, Some(peer));
                (client_key, PeerKey::new(relay, peer, 0), 0, None)
            }
        };
        if let Some(&id) = self.by_key.get(&client_key) {
            let installed = self.installed(id)?;
            if installed.peer_key != peer_key {
                return Err(InstallError::Conflict);
            }
            return Ok(id);
        }
        let slot = self.free.pop().ok_or(InstallError::Full {
            capacity: self.entries.len(),
        })?;
        let to_peer = ToPeer {
            relay_ip: maps::ip_bytes(relay.ip()),
            peer_ip: peer.map(|p| maps::ip_bytes(p.ip())).unwrap_or_default(),
            loop_relay_ip: loopback
                .map(|l| maps::ip_bytes(l.peer_relay_ip))
                .unwrap_or_default(),
            loop_self_ip: loopback
                .map(|l| maps::ip_bytes(l.self_ip))
                .unwrap_or_default(),
            relay_port: relay.port().to_be_bytes(),
            peer_port: peer.map(|p| p.port()).unwrap_or(0).to_be_bytes(),
            slot,
        };
        let to_client = ToClient {
            client_ip: maps::ip_bytes(tuple.client.ip()),
            server_ip: maps::ip_bytes(tuple.server.ip()),
            client_port: tuple.client.port().to_be_bytes(),
            server_port: tuple.server.port().to_be_bytes(),
            channel: channel.to_be_bytes(),
            flags: if relay_ports_only {
                maps::TO_CLIENT_RELAY_PORTS_ONLY
            } else {
                0
            },
            slot,
        };
        // A fresh slot starts from zero (a removed entry's last packets may have landed late).
        let inserted = PerCpuValues::try_from(vec![RawCounters::default(); self.cpus])
            .map_err(InstallError::kernel)
            .and_then(|zero| {
                self.counters
                    .set(slot, zero, 0)
                    .map_err(InstallError::kernel)
            })
            .and_then(|()| {
                self.from_peer
                    .insert(peer_key, to_client, aya_flags::NOEXIST)
                    .map_err(InstallError::kernel)
            })
            .and_then(|()| {
                self.from_client
                    .insert(client_key, to_peer, aya_flags::NOEXIST)
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
        self.entries[slot as usize] = Some(Installed {
            client_key,
            peer_key,
            generation: id.generation,
        });
        self.by_key.insert(client_key, id);
        Ok(id)
    }

    fn installed(&self, id: EntryId) -> Result<&Installed, InstallError> {
        match self.entries.get(id.slot as usize) {
            Some(Some(entry)) if entry.generation == id.generation => Ok(entry),
            _ => Err(InstallError::UnknownEntry),
        }
    }

    /// Takes the entry out of the kernel: from now on its traffic goes to user space. Returns
    /// what the kernel relayed for it, to fold into the allocation's traffic.
    pub fn remove(&mut self, id: EntryId) -> Result<Counters, InstallError> {
        let installed = self.installed(id)?;
        let (client_key, peer_key) = (installed.client_key, installed.peer_key);
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
        self.installed(id)?;
        let values = self
            .counters
            .get(&id.slot, 0)
            .map_err(InstallError::kernel)?;
        Ok(sum(values.iter()))
    }

    /// What the kernel relayed since attach, over every entry and CPU.
    pub fn totals(&self) -> Counters {
        self.totals
            .get(&0, 0)
            .map(|values| sum(values.iter()))
            .unwrap_or_default()
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
            no_hop: read(3),
            too_big: read(4),
            no_checksum: read(5),
            adjust_failed: read(6),
            partial_checksum: read(7),
        }
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a RawCounters>) -> Counters {
    values.fold(Counters::default(), |sum, c| Counters {
        to_peer_packets: sum.to_peer_packets + c.to_peer_packets,
        to_peer_bytes: sum.to_peer_bytes + c.to_peer_bytes,
        to_client_packets: sum.to_client_packets + c.to_client_packets,
        to_client_bytes: sum.to_client_bytes + c.to_client_bytes,
    })
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

fn interface_index(interface: &str) -> Result<u32, Unavailable> {
    let unknown = || Unavailable::Attach {
        interface: interface.to_string(),
        reason: "no such interface".into(),
    };
    let name = std::ffi::CString::new(interface).map_err(|_| unknown())?;
    // SAFETY: if_nametoindex reads a NUL-terminated string and nothing else.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

/// Whether `interface` is a loopback device (IFF_LOOPBACK).
pub fn is_loopback(interface: &str) -> bool {
    let mut request = ifreq(interface);
    interface_ioctl(libc::SIOCGIFFLAGS, &mut request)
        // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
        && unsafe { request.ifr_ifru.ifru_flags } as i32 & libc::IFF_LOOPBACK != 0
}

/// Whether `interface` carries Ethernet frames (its hardware address is ARPHRD_ETHER).
pub fn is_ethernet(interface: &str) -> bool {
    let mut request = ifreq(interface);
    interface_ioctl(libc::SIOCGIFHWADDR, &mut request)
        // SAFETY: SIOCGIFHWADDR filled in the hardware address member of the union.
        && unsafe { request.ifr_ifru.ifru_hwaddr.sa_family } == libc::ARPHRD_ETHER
}

/// An `ifreq` naming `interface` (asked of the network namespace of the calling thread, which
/// sysfs would not be).
fn ifreq(interface: &str) -> libc::ifreq {
    // SAFETY: all-zero is a valid ifreq (a name array and a union of plain data and a pointer).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request
        .ifr_name
        .iter_mut()
        .take(libc::IFNAMSIZ - 1)
        .zip(interface.bytes())
    {
        *dst = src as libc::c_char;
    }
    request
}

/// Runs an interface ioctl on a throwaway datagram socket; whether it succeeded.
fn interface_ioctl(request_code: libc::c_ulong, request: &mut libc::ifreq) -> bool {
    // SAFETY: a socket for the ioctl, closed before returning; `request` is a valid ifreq the
    // kernel reads the name from and writes at most one ifreq into.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let rc = libc::ioctl(fd, request_code, request as *mut libc::ifreq);
        libc::close(fd);
        rc == 0
    }
}

/// The name of `interface`'s driver (`ethtool -i`), if it says.
fn driver(interface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid DrvInfo (integers and arrays).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = ifreq(interface);
    request.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SIOCETHTOOL with ETHTOOL_GDRVINFO writes at most size_of::<DrvInfo>() bytes into `info`,
    // which outlives the call.
    if !interface_ioctl(libc::SIOCETHTOOL, &mut request) {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}
