//! Steering of UDP datagrams over tern's workers, in the kernel.
//!
//! Every UDP worker has its own listener socket on each listening address, joined in one
//! `SO_REUSEPORT` group per address; by default the kernel spreads clients over the group by a
//! hash of their addresses. That splits even a light load over every worker, so each wakes for
//! fewer datagrams and the machine pays more wake-ups per packet. [`Steering`] attaches an
//! `SK_REUSEPORT` program (`bpf/steer.bpf.c`) to each group instead:
//!
//! - a client 5-tuple with an allocation ([`Steering::pin`]) always reaches the worker that owns
//!   it: its relay socket and state live there, so it must never move;
//! - a new client reaches the first worker whose published load ([`Steering::publish_load`],
//!   datagrams per second) is under the budget;
//! - when every worker is over the budget, the kernel's hash picks, as without the program.
//!
//! Needs CAP_BPF (or root) and a clang-built program; [`Steering::attach`] says why not
//! otherwise, and the caller keeps the kernel's hash (the program is all or nothing per group).
//!
//! Maps and the program are made with the `bpf(2)` system call directly: the object is read with
//! the `object` crate and its map references bound to the maps made here, by name.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Workers a program can steer to (the size of its socket array).
pub const MAX_WORKERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("steering not built: {0}")]
    NotBuilt(&'static str),
    #[error("more than {MAX_WORKERS} workers")]
    TooManyWorkers,
    #[error("the program object is malformed: {0}")]
    Object(String),
    #[error("{what}: {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the program: {error}: {log}")]
    Verifier { error: io::Error, log: String },
}

fn kernel(what: &'static str) -> impl FnOnce(io::Error) -> SteerError {
    move |source| SteerError::Kernel { what, source }
}

/// Whether the program was built (clang and the BPF headers were there at build time).
pub fn built() -> bool {
    cfg!(tern_steer_built)
}

/// The clang-built program object (`build.rs`).
#[cfg(tern_steer_built)]
fn program_object() -> Result<&'static [u8], SteerError> {
    /// ELF readers want the object 8-byte aligned; `include_bytes!` alone does not promise it.
    #[repr(C, align(8))]
    struct Aligned<T: ?Sized>(T);
    static OBJECT: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o")));
    Ok(&OBJECT.0)
}

#[cfg(not(tern_steer_built))]
fn program_object() -> Result<&'static [u8], SteerError> {
    Err(SteerError::NotBuilt(env!("TERN_STEER_NOT_BUILT")))
}

/// A client 5-tuple as the program sees it (`struct flow` in `bpf/steer.bpf.c`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flow {
    family: u32,
    client_port: [u8; 2],
    server_port: [u8; 2],
    client_ip: [u8; 16],
    server_ip: [u8; 16],
}

impl Flow {
    /// `None` when the two addresses are of different families (no datagram has that shape).
    fn new(client: SocketAddr, server: SocketAddr) -> Option<Flow> {
        let mut flow = Flow {
            client_port: client.port().to_be_bytes(),
            server_port: server.port().to_be_bytes(),
            ..Flow::default()
        };
        match (client, server) {
            (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                flow.family = 4;
                flow.client_ip[..4].copy_from_slice(&c.ip().octets());
                flow.server_ip[..4].copy_from_slice(&s.ip().octets());
            }
            (SocketAddr::V6(c), SocketAddr::V6(s)) => {
                flow.family = 6;
                flow.client_ip = c.ip().octets();
                flow.server_ip = s.ip().octets();
            }
            _ => return None,
        }
        Some(flow)
    }
}

/// `struct settings` in `bpf/steer.bpf.c`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Settings {
    workers: u32,
    pad: u32,
    budget: u64,
}

/// The steering of one set of workers: shared by them (the maps are the kernel's; every call is
/// one `bpf(2)` system call, and none is made per packet).
#[derive(Debug)]
pub struct Steering {
    owners: OwnedFd,
    loads: OwnedFd,
    workers: usize,
    /// One program and socket array per reuseport group; kept open for the steering's life (the
    /// groups hold the programs too).
    _groups: Vec<(OwnedFd, OwnedFd)>,
}

impl Steering {
    /// Attaches the program to each reuseport group: `groups[g][w]` is worker `w`'s listener
    /// socket on listening address `g` (all already bound). New clients go to the first worker
    /// under `budget` datagrams per second; at most `max_flows` clients can be pinned at once
    /// (the allocations a server can hold).
    pub fn attach(
        groups: &[Vec<RawFd>],
        budget: u64,
        max_flows: u32,
    ) -> Result<Steering, SteerError> {
        let workers = groups.iter().map(Vec::len).max().unwrap_or(0);
        if workers > MAX_WORKERS {
            return Err(SteerError::TooManyWorkers);
        }
        let object = program_object()?;
        let (instructions, references) = read_program(object)?;
        let owners = sys::map_create(
            libc_bpf::MAP_TYPE_HASH,
            size_of::<Flow>(),
            size_of::<u32>(),
            max_flows.max(1),
            libc_bpf::F_NO_PREALLOC,
        )
        .map_err(kernel("creating the owners map"))?;
        let loads = sys::map_create(libc_bpf::MAP_TYPE_ARRAY, 4, 8, MAX_WORKERS as u32, 0)
            .map_err(kernel("creating the loads map"))?;
        let settings = sys::map_create(libc_bpf::MAP_TYPE_ARRAY, 4, size_of::<Settings>(), 1, 0)
            .map_err(kernel("creating the settings map"))?;
        let value = Settings {
            workers: workers as u32,
            pad: 0,
            budget,
        };
        sys::map_update(&settings, &0u32, &value, libc_bpf::ANY)
            .map_err(kernel("writing the settings"))?;
        let mut attached = Vec::new();
        for group in groups {
            let sockets = sys::map_create(
                libc_bpf::MAP_TYPE_REUSEPORT_SOCKARRAY,
                4,
                8,
                MAX_WORKERS as u32,
                0,
            )
            .map_err(kernel("creating a socket array"))?;
            for (worker, fd) in group.iter().enumerate() {
                sys::map_update(&sockets, &(worker as u32), &(*fd as u64), libc_bpf::ANY)
                    .map_err(kernel("adding a listener to the socket array"))?;
            }
            let mut code = instructions.clone();
            for (at, name) in &references {
                let fd = match name.as_str() {
                    "owners" => owners.as_raw_fd(),
                    "loads" => loads.as_raw_fd(),
                    "settings" => settings.as_raw_fd(),
                    "sockets" => sockets.as_raw_fd(),
                    other => return Err(SteerError::Object(format!("unknown map {other}"))),
                };
                bind_map(&mut code, *at, fd)?;
            }
            let program = sys::prog_load(&code)?;
            if let Some(fd) = group.first() {
                sys::attach_reuseport(*fd, &program).map_err(kernel("attaching the program"))?;
            }
            attached.push((program, sockets));
        }
        Ok(Steering {
            owners,
            loads,
            workers,
            _groups: attached,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// From now on `client` → `server` datagrams reach `worker`, whatever the loads (its
    /// allocation lives there). Must be called before the client can learn of the allocation.
    pub fn pin(&self, client: SocketAddr, server: SocketAddr, worker: usize) -> io::Result<()> {
        let Some(flow) = Flow::new(client, server) else {
            return Ok(());
        };
        sys::map_update(&self.owners, &flow, &(worker as u32), libc_bpf::ANY)
    }

    /// The allocation of `client` → `server` ended: the client is new again.
    pub fn unpin(&self, client: SocketAddr, server: SocketAddr) {
        if let Some(flow) = Flow::new(client, server) {
            let _ = sys::map_delete(&self.owners, &flow);
        }
    }

    /// Worker `worker` handles `datagrams_per_second`: above the budget, new clients go on.
    pub fn publish_load(&self, worker: usize, datagrams_per_second: u64) -> io::Result<()> {
        sys::map_update(
            &self.loads,
            &(worker as u32),
            &datagrams_per_second,
            libc_bpf::ANY,
        )
    }

    /// The worker a pinned client is steered to (tests and diagnostics).
    pub fn owner(&self, client: SocketAddr, server: SocketAddr) -> Option<usize> {
        let flow = Flow::new(client, server)?;
        let mut worker = 0u32;
        sys::map_lookup(&self.owners, &flow, &mut worker)
            .ok()
            .map(|()| worker as usize)
    }
}

/// One BPF instruction: 8 bytes.
type Instruction = [u8; 8];

/// Where the program names a map: the instruction's index and the map's name.
type MapReference = (usize, String);

/// The program's instructions and its map references.
fn read_program(object: &[u8]) -> Result<(Vec<Instruction>, Vec<MapReference>), SteerError> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    let bad = |e: &dyn std::fmt::Display| SteerError::Object(e.to_string());
    let file = object::File::parse(object).map_err(|e| bad(&e))?;
    let section = file
        .section_by_name("sk_reuseport")
        .ok_or_else(|| bad(&"no sk_reuseport section"))?;
    let data = section.data().map_err(|e| bad(&e))?;
    if data.len() % 8 != 0 {
        return Err(bad(&"the program is not whole instructions"));
    }
    let instructions = data
        .chunks_exact(8)
        .map(|c| c.try_into().expect("8 bytes"))
        .collect();
    let mut references = Vec::new();
    for (offset, relocation) in section.relocations() {
        let RelocationTarget::Symbol(index) = relocation.target() else {
            return Err(bad(&"a relocation without a symbol"));
        };
        let symbol = file.symbol_by_index(index).map_err(|e| bad(&e))?;
        let name = symbol.name().map_err(|e| bad(&e))?;
        references.push((offset as usize / 8, name.to_string()));
    }
    Ok((instructions, references))
}

/// Points the 16-byte load at `at` (`r = map ll`) to the map `fd`.
fn bind_map(code: &mut [Instruction], at: usize, fd: RawFd) -> Result<(), SteerError> {
    let insn = code
        .get_mut(at)
        .filter(|i| i[0] == libc_bpf::LD_IMM64)
        .ok_or_else(|| SteerError::Object(format!("no map load at instruction {at}")))?;
    insn[1] = (insn[1] & 0x0f) | (libc_bpf::PSEUDO_MAP_FD << 4);
    insn[4..8].copy_from_slice(&fd.to_le_bytes());
    Ok(())
}

/// The constants of `linux/bpf.h` used here (the libc crate has few of them).
mod libc_bpf {
    pub const MAP_CREATE: libc::c_int = 0;
    pub const MAP_LOOKUP_ELEM: libc::c_int = 1;
    pub const MAP_UPDATE_ELEM: libc::c_int = 2;
    pub const MAP_DELETE_ELEM: libc::c_int = 3;
    pub const PROG_LOAD: libc::c_int = 5;
    pub const MAP_TYPE_HASH: u32 = 1;
    pub const MAP_TYPE_ARRAY: u32 = 2;
    pub const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
    pub const PROG_TYPE_SK_REUSEPORT: u32 = 21;
    pub const F_NO_PREALLOC: u32 = 1;
    pub const ANY: u64 = 0;
    pub const LD_IMM64: u8 = 0x18;
    pub const PSEUDO_MAP_FD: u8 = 1;
    /// `SO_ATTACH_REUSEPORT_EBPF` (asm-generic/socket.h).
    pub const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
}

/// The `bpf(2)` calls, each with its own `union bpf_attr` layout.
mod sys {
    use super::{libc_bpf, Instruction, SteerError};
    use std::io;
    use std::mem::size_of;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }

    #[repr(C)]
    struct MapElem {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }

    fn bpf<T>(command: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a properly laid out prefix of `union bpf_attr` for `command`, and
        // every pointer inside it refers to memory alive for the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr as *mut T,
                size_of::<T>() as libc::c_uint,
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(result)
    }

    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    }

    pub fn map_create(
        map_type: u32,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
        map_flags: u32,
    ) -> io::Result<OwnedFd> {
        let mut attr = MapCreate {
            map_type,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries,
            map_flags,
        };
        bpf(libc_bpf::MAP_CREATE, &mut attr).map(owned)
    }

    fn elem<K, V>(map: &OwnedFd, key: &K, value: *const V, flags: u64) -> MapElem {
        MapElem {
            map_fd: map.as_raw_fd() as u32,
            pad: 0,
            key: key as *const K as u64,
            value: value as u64,
            flags,
        }
    }

    pub fn map_update<K, V>(map: &OwnedFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
        let mut attr = elem(map, key, value as *const V, flags);
        bpf(libc_bpf::MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    pub fn map_lookup<K, V>(map: &OwnedFd, key: &K, value: &mut V) -> io::Result<()> {
        let mut attr = elem(map, key, value as *mut V as *const V, 0);
        bpf(libc_bpf::MAP_LOOKUP_ELEM, &mut attr).map(drop)
    }

    pub fn map_delete<K>(map: &OwnedFd, key: &K) -> io::Result<()> {
        let mut attr = elem::<K, u8>(map, key, std::ptr::null(), 0);
        bpf(libc_bpf::MAP_DELETE_ELEM, &mut attr).map(drop)
    }

    pub fn prog_load(code: &[Instruction]) -> Result<OwnedFd, SteerError> {
        let license = c"Dual BSD/GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoad {
            prog_type: libc_bpf::PROG_TYPE_SK_REUSEPORT,
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..ProgLoad::default()
        };
        if let Ok(fd) = bpf(libc_bpf::PROG_LOAD, &mut attr) {
            return Ok(owned(fd));
        }
        // Again with the verifier's log, to say why.
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
        match bpf(libc_bpf::PROG_LOAD, &mut attr) {
            Ok(fd) => Ok(owned(fd)),
            Err(error) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                let log = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
                Err(SteerError::Verifier { error, log })
            }
        }
    }

    pub fn attach_reuseport(socket: RawFd, program: &OwnedFd) -> io::Result<()> {
        let fd: libc::c_int = program.as_raw_fd();
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        let result = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                libc_bpf::SO_ATTACH_REUSEPORT_EBPF,
                (&fd as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_match_the_programs_layout() {
        assert_eq!(size_of::<Flow>(), 40);
        assert_eq!(size_of::<Settings>(), 16);
        let flow = Flow::new(
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.2:3478".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(flow.family, 4);
        assert_eq!(flow.client_port, [0x13, 0x88]);
        assert_eq!(&flow.client_ip[..5], &[192, 0, 2, 1, 0]);
        assert!(Flow::new(
            "192.0.2.1:5000".parse().unwrap(),
            "[2001:db8::1]:3478".parse().unwrap()
        )
        .is_none());
    }

    #[cfg(tern_steer_built)]
    #[test]
    fn the_object_has_a_program_and_its_map_references() {
        let (code, references) = read_program(program_object().unwrap()).unwrap();
        assert!(code.len() > 20);
        let mut names: Vec<&str> = references.iter().map(|(_, n)| n.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names, ["loads", "owners", "settings", "sockets"]);
        for (at, _) in &references {
            assert_eq!(code[*at][0], libc_bpf::LD_IMM64);
        }
    }
}
