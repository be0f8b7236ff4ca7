//! The kernel fast path (`tern-xdp`) as the UDP workers drive it: which interfaces it attaches
//! to, each worker's offload events ([`Event::Offload`](crate::turn::Event::Offload),
//! [`Event::Unoffload`](crate::turn::Event::Unoffload), `Released`) turned into map entries, the
//! entries' counters folded back into the allocations, and the kernel's totals into `/metrics`.
//!
//! Only control events touch the maps (a ChannelBind, a CreatePermission, an expiry, a reload,
//! an allocation's end), under one mutex the workers share; packets never do. The entries of a
//! worker's allocations are filed per allocation, so its end removes them without a scan.

use super::stats::{FastPathPass, FastPathStats};
use crate::config::Config;
use crate::turn::{AllocId, ExternalIp, Offload, OffloadKey, Offloaded, Traffic};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use tern_xdp::{
    AttachPolicy, ClientTuple, Counters, Entry, EntryId, EntryKind, FastPath, InstallError,
    Loopback, Mode, Settings,
};
use tracing::{debug, info, warn};

/// The attached fast path, shared by the UDP workers (and detached by the service at shutdown).
pub struct SharedFastPath {
    path: Mutex<Option<FastPath>>,
    stats: Arc<FastPathStats>,
    /// The addresses relay sockets bind to: a peer at one of them is another allocation.
    relay_ips: Vec<IpAddr>,
}

/// Starts the fast path per `fast-path`: `None` when it is off, or (under `auto`) when it cannot
/// run, logged once with the reason; an error under `required`.
pub fn start(
    config: &Config,
    listening_ips: &[IpAddr],
    relay_ips: Vec<IpAddr>,
    stats: Arc<FastPathStats>,
) -> io::Result<Option<Arc<SharedFastPath>>> {
    if config.fast_path == Mode::Off {
        return Ok(None);
    }
    let interfaces = if config.fast_path_interfaces.is_empty() {
        serving_interfaces(listening_ips.iter().chain(&relay_ips))
    } else {
        config.fast_path_interfaces.clone()
    };
    let settings = Settings {
        interfaces,
        capacity: config.fast_path_capacity,
        relay_ports: config.min_port..=config.max_port,
        attach: AttachPolicy::Auto,
    };
    let attached = match FastPath::attach(&settings) {
        Ok(path) => path,
        Err(reason) if config.fast_path == Mode::Auto => {
            info!("fast path off (fast-path = \"auto\"), relaying in user space: {reason}");
            return Ok(None);
        }
        Err(reason) => {
            return Err(io::Error::other(format!(
                "fast-path = \"required\", but the fast path cannot run: {reason}"
            )));
        }
    };
    let modes: Vec<String> = attached
        .attached()
        .iter()
        .map(|(interface, mode)| format!("{interface} ({mode:?})"))
        .collect();
    info!(interfaces = %modes.join(", "), capacity = settings.capacity, "fast path on: UDP channels and permissions relay in the kernel");
    stats.active.store(1, Relaxed);
    Ok(Some(Arc::new(SharedFastPath {
        path: Mutex::new(Some(attached)),
        stats,
        relay_ips,
    })))
}

/// The interfaces that carry `addresses` (a wildcard listener's expansion included) and can take
/// the program: Ethernet, not loopback. What is left out is said at debug level; if nothing is
/// left, loopback is named, so `auto`'s log line says why.
fn serving_interfaces<'a>(addresses: impl Iterator<Item = &'a IpAddr>) -> Vec<String> {
    let addresses: Vec<IpAddr> = addresses.copied().collect();
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces,
        Err(error) => {
            warn!(%error, "fast path: cannot list the interfaces");
            return Vec::new();
        }
    };
    let mut names: Vec<String> = Vec::new();
    let mut loopback = None;
    for interface in interfaces {
        if !addresses.contains(&interface.ip()) || names.contains(&interface.name) {
            continue;
        }
        if tern_xdp::is_loopback(&interface.name) {
            loopback = Some(interface.name);
        } else if !tern_xdp::is_ethernet(&interface.name) {
            debug!(interface = %interface.name, "fast path: not an Ethernet interface, left out");
        } else {
            names.push(interface.name);
        }
    }
    if names.is_empty() {
        names.extend(loopback); // refused by name, which the log line then gives
    } else if let Some(lo) = loopback {
        debug!(interface = %lo, "fast path: loopback is not served, left out");
    }
    names
}

impl SharedFastPath {
    fn lock(&self) -> MutexGuard<'_, Option<FastPath>> {
        self.path
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Detaches the program: from now on everything reaches the workers (shutdown, before the
    /// workers stop and their relay sockets close).
    pub fn detach(&self) {
        if self.lock().take().is_some() {
            self.stats.active.store(0, Relaxed);
            self.stats.entries.store(0, Relaxed);
        }
    }

    /// Stores the kernel's totals and outcomes for `/metrics`: two per-CPU cells and the entry
    /// count, whatever the number of entries.
    pub fn publish(&self) {
        let path = self.lock();
        let Some(path) = path.as_ref() else {
            return;
        };
        let totals = path.totals();
        let outcomes = path.outcomes();
        self.stats.store_relayed(
            (totals.to_peer_packets, totals.to_peer_bytes),
            (totals.to_client_packets, totals.to_client_bytes),
        );
        for (reason, count) in [
            (FastPathPass::NoHop, outcomes.no_hop),
            (FastPathPass::TooBig, outcomes.too_big),
            (FastPathPass::Unsupported, outcomes.unsupported),
            (FastPathPass::NoChecksum, outcomes.no_checksum),
            (FastPathPass::AdjustFailed, outcomes.adjust_failed),
            (FastPathPass::PartialChecksum, outcomes.partial_checksum),
        ] {
            self.stats.passed[reason as usize].store(count, Relaxed);
        }
        self.stats.entries.store(path.len() as u64, Relaxed);
    }
}

/// One worker's entries in the shared fast path, by allocation.
pub(super) struct WorkerOffload {
    shared: Arc<SharedFastPath>,
    entries: HashMap<AllocId, Vec<(OffloadKey, EntryId)>>,
    /// `external-ip` as of the last reload: which public addresses are this host's relays.
    external_ips: Vec<ExternalIp>,
}

impl WorkerOffload {
    pub fn new(shared: Arc<SharedFastPath>, external_ips: Vec<ExternalIp>) -> WorkerOffload {
        WorkerOffload {
            shared,
            entries: HashMap::new(),
            external_ips,
        }
    }

    pub fn shared(&self) -> &Arc<SharedFastPath> {
        &self.shared
    }

    pub fn set_external_ips(&mut self, external_ips: Vec<ExternalIp>) {
        self.external_ips = external_ips;
    }

    /// Installs what the server announced. A full fast path leaves it to user space, counted.
    pub fn offload(&mut self, offload: &Offload) {
        let kind = match offload.what {
            Offloaded::Channel { number, peer } => EntryKind::Channel { number, peer },
            Offloaded::Permission { peer } => EntryKind::Permission { peer },
        };
        let entry = Entry {
            tuple: ClientTuple {
                client: offload.tuple.client,
                server: offload.tuple.server,
            },
            relay: offload.relay,
            kind,
            relay_ports_only: offload.relay_ports_only,
            loopback: self.loopback(kind.peer_ip(), offload.advertised.ip()),
        };
        let key = offload.what.key();
        let mut path = self.shared.lock();
        let Some(path) = path.as_mut() else {
            return;
        };
        match path.install(&entry) {
            Ok(id) => {
                let entries = self.entries.entry(offload.alloc).or_default();
                if !entries.contains(&(key, id)) {
                    entries.push((key, id));
                }
            }
            Err(InstallError::Full { capacity }) => {
                self.shared.stats.install_failures.fetch_add(1, Relaxed);
                debug!(
                    capacity,
                    ?entry,
                    "fast path full: this one relays in user space"
                );
            }
            Err(error) => debug!(%error, ?entry, "fast path: not installed, relays in user space"),
        }
    }

    /// Takes out what the server withdrew; what the kernel relayed for it, if it was installed.
    pub fn unoffload(&mut self, alloc: AllocId, what: OffloadKey) -> Option<Traffic> {
        let entries = self.entries.get_mut(&alloc)?;
        let at = entries.iter().position(|(key, _)| *key == what)?;
        let (_, id) = entries.swap_remove(at);
        if entries.is_empty() {
            self.entries.remove(&alloc);
        }
        let mut path = self.shared.lock();
        match path.as_mut()?.remove(id) {
            Ok(counters) => Some(traffic(counters)),
            Err(error) => {
                warn!(%error, "fast path: removing an entry failed");
                None
            }
        }
    }

    /// The allocation ended: every entry of it goes.
    pub fn release(&mut self, alloc: AllocId) {
        let Some(entries) = self.entries.remove(&alloc) else {
            return;
        };
        let mut path = self.shared.lock();
        if let Some(path) = path.as_mut() {
            for (_, id) in entries {
                if let Err(error) = path.remove(id) {
                    warn!(%error, "fast path: removing an entry failed");
                }
            }
        }
    }

    /// What the kernel relayed so far for the allocation's live entries (the admin API adds it
    /// to what the server counted).
    pub fn live_traffic(&self, alloc: AllocId) -> Traffic {
        let Some(entries) = self.entries.get(&alloc) else {
            return Traffic::default();
        };
        let path = self.shared.lock();
        let Some(path) = path.as_ref() else {
            return Traffic::default();
        };
        entries
            .iter()
            .filter_map(|(_, id)| path.counters(*id).ok())
            .map(traffic)
            .fold(Traffic::default(), |sum, t| sum + t)
    }

    /// Whether `peer` is the relay address of another allocation on this host: one of the
    /// addresses relay sockets bind to, or an `external-ip` that stands for one. `self_ip` is the
    /// entry's own relay address as the other allocation sees it.
    fn loopback(&self, peer: IpAddr, self_ip: IpAddr) -> Option<Loopback> {
        let relay_ips = &self.shared.relay_ips;
        let bound_at = if relay_ips.contains(&peer) {
            Some(peer)
        } else {
            let external = self.external_ips.iter().find(|e| e.public == peer)?;
            match external.private {
                Some(private) => relay_ips.contains(&private).then_some(private),
                None => {
                    // One public address for every relay of its family: the one relay address.
                    let mut same_family =
                        relay_ips.iter().filter(|ip| ip.is_ipv4() == peer.is_ipv4());
                    match (same_family.next(), same_family.next()) {
                        (Some(only), None) => Some(*only),
                        _ => None,
                    }
                }
            }
        };
        bound_at.map(|peer_relay_ip| Loopback {
            peer_relay_ip,
            self_ip,
        })
    }
}

fn traffic(counters: Counters) -> Traffic {
    Traffic {
        packets_to_peer: counters.to_peer_packets,
        bytes_to_peer: counters.to_peer_bytes,
        packets_to_client: counters.to_client_packets,
        bytes_to_client: counters.to_client_bytes,
    }
}
