//! Connection admission: the `governor-enforce` kernel programs, their
//! attachments and their token buckets.
//!
//! Nothing here needs a journal: the programs are attached through links
//! that belong to this process and are never pinned, so when the agent exits
//! or dies, however it dies, the kernel detaches them and every port and
//! cgroup is back to normal.

use std::{
    collections::HashMap,
    fs::File,
    net::{Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap as BpfHashMap, MapData, PerCpuHashMap, SockHash, SockMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, cgroup_sock_addr::CgroupSockAddrLinkId,
        sk_lookup::SkLookupLinkId,
    },
};
use governor_common::enforce::{
    Bucket, ExemptData, FLAG_REJECT_ALL, Guard, MODE_DROP, MODE_RESET, Verdicts, cgroup_scope,
    names, port_scope,
};
use ipnet::IpNet;

use governor_engine::config::RejectMode;

/// The object built from `governor-ebpf/src/enforce.rs`.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor-enforce"));

/// An enforcement failure, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The object did not load.
    #[error("loading the enforcement programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map update failed.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: aya::maps::MapError,
    },
    /// A file (namespace, cgroup) could not be opened, or a socket made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The guard cannot run on this kernel (why, and what it needs).
    #[error("the accept-queue guard is unavailable: {0}")]
    Unavailable(String),
    /// The object lacks a program or map (build mismatch).
    #[error("{0} is missing from the enforcement object")]
    Missing(&'static str),
}

/// What to admit.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Connections per second; `None` refuses everything (reject_connections).
    pub rate: Option<f64>,
    /// Bucket size: connections admitted back to back.
    pub burst: u32,
    /// How the excess is refused.
    pub mode: RejectMode,
    /// Peers that always pass (inbound: sources; outbound: destinations).
    pub exempt: Vec<IpNet>,
}

impl Rule {
    fn bucket(&self, now_tat: u64) -> Bucket {
        let mode = match self.mode {
            RejectMode::Reset => MODE_RESET,
            RejectMode::Drop => MODE_DROP,
        };
        match self.rate {
            Some(r) if r > 0.0 => {
                let interval = (1e9 / r).max(1.0) as u64;
                Bucket {
                    interval_ns: interval,
                    tolerance_ns: interval.saturating_mul(u64::from(self.burst.max(1) - 1)),
                    tat_ns: now_tat,
                    mode,
                    flags: 0,
                }
            }
            _ => Bucket {
                mode,
                flags: FLAG_REJECT_ALL,
                ..Bucket::default()
            },
        }
    }
}

/// The exemption keys of `nets` in a scope.
fn exempt_keys(scope: [u8; 8], nets: &[IpNet]) -> Vec<Key<ExemptData>> {
    nets.iter()
        .map(|net| {
            let (addr, prefix): (Ipv6Addr, u32) = match net {
                IpNet::V4(v4) => (
                    v4.network().to_ipv6_mapped(),
                    96 + u32::from(v4.prefix_len()),
                ),
                IpNet::V6(v6) => (v6.network(), u32::from(v6.prefix_len())),
            };
            let mut data = [0u8; 24];
            data[..8].copy_from_slice(&scope);
            data[8..].copy_from_slice(&addr.octets());
            Key::new(64 + prefix, data)
        })
        .collect()
}

/// The loaded enforcement programs and what they are attached to.
pub struct NetEnforcer {
    ebpf: Ebpf,
    netns: Option<(PathBuf, SkLookupLinkId)>,
    /// By cgroup id (the directory's inode): a cgroup removed and made
    /// again at the same path is a new cgroup, with no program yet.
    cgroups: HashMap<u64, (PathBuf, [CgroupSockAddrLinkId; 2])>,
    /// Exemption keys in force, by scope (a port's or a cgroup's).
    exempt_of: HashMap<[u8; 8], Vec<Key<ExemptData>>>,
    /// The drop sinks (IPv4, and IPv6 where the namespace has it): a
    /// listener with a full accept queue each, and the connection that fills it.
    sinks: Vec<(socket2::Socket, TcpStream)>,
    /// Why this kernel cannot run the accept-queue guard; `None` if it can.
    guard_unavailable: Option<String>,
}

/// The oldest kernel on which the guard's pieces are all there: sk_lookup
/// (5.9), a sock hash holding listeners (5.7), `bpf_skc_to_tcp_sock` in
/// sk_lookup programs (5.9) and BTF; the VM matrix starts at 5.10.
pub const GUARD_MIN_KERNEL: &str = "5.10";

impl NetEnforcer {
    /// Loads the enforcement object; nothing is attached yet.
    ///
    /// The guard is feature-probed here: the object is loaded with the
    /// guard's code enabled and its `sk_lookup` program verified; if BTF
    /// lacks the offset or the kernel refuses the program, the object is
    /// loaded again with the guard's code disabled (the verifier prunes it),
    /// and [`Self::guard_unavailable`] says why.
    pub fn load() -> Result<Self, EnforceError> {
        let offset = crate::probes::btf::KernelBtf::open(Path::new(crate::probes::btf::VMLINUX))
            .map_err(|e| e.to_string())
            .and_then(|b| b.ack_backlog_offset().map_err(|e| e.to_string()));
        let why = match offset {
            Ok(off) => match Self::load_with(Some(off)) {
                Ok(me) => return Ok(me),
                Err(e) => format!("the kernel refused the guard's program: {e}"),
            },
            Err(e) => format!("no accept-queue offset from BTF: {e}"),
        };
        let mut me = Self::load_with(None)?;
        me.guard_unavailable = Some(format!(
            "{why} (the guard needs Linux >= {GUARD_MIN_KERNEL} with BTF)"
        ));
        Ok(me)
    }

    fn load_with(ack_backlog: Option<u32>) -> Result<Self, EnforceError> {
        let ready = u32::from(ack_backlog.is_some());
        let off = ack_backlog.unwrap_or(0);
        let ebpf = EbpfLoader::new()
            .override_global(names::GLOBAL_SK_ACK_BACKLOG, &off, true)
            .override_global(names::GLOBAL_GUARD_READY, &ready, true)
            .load(OBJECT)?;
        let mut me = Self {
            ebpf,
            netns: None,
            cgroups: HashMap::new(),
            exempt_of: HashMap::new(),
            sinks: Vec::new(),
            guard_unavailable: None,
        };
        if ready != 0 {
            // Verified now, so that a refusal falls back to no guard.
            me.admit_program()?;
        }
        Ok(me)
    }

    /// Why the guard cannot run on this kernel (`None`: it can).
    pub fn guard_unavailable(&self) -> Option<&str> {
        self.guard_unavailable.as_deref()
    }

    /// The sk_lookup program, loaded into the kernel.
    fn admit_program(&mut self) -> Result<&mut SkLookup, EnforceError> {
        let prog: &mut SkLookup = self
            .ebpf
            .program_mut(names::PROG_ADMIT)
            .ok_or(EnforceError::Missing(names::PROG_ADMIT))?
            .try_into()
            .map_err(|source| EnforceError::Program {
                what: "sk_lookup program".into(),
                source,
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| EnforceError::Program {
                what: "loading sk_lookup".into(),
                source,
            })?;
        }
        Ok(prog)
    }

    /// Arms the guard of local `port`: new connections are refused while
    /// the accept queue of `listener` (the port's listening socket, any fd
    /// of it: the kernel holds its own reference) holds `bound` or more.
    /// Replaces an earlier guard and listener of the port.
    pub fn set_guard(
        &mut self,
        port: u16,
        bound: u32,
        mode: RejectMode,
        listener: &impl std::os::fd::AsRawFd,
    ) -> Result<(), EnforceError> {
        if let Some(why) = &self.guard_unavailable {
            return Err(EnforceError::Unavailable(why.clone()));
        }
        self.set_listener(port, listener)?;
        self.set_guard_bound(port, bound, mode)
    }

    /// Puts `listener` in `LISTENERS` for `port` (after a server restart,
    /// its new listening socket).
    pub fn set_listener(
        &mut self,
        port: u16,
        listener: &impl std::os::fd::AsRawFd,
    ) -> Result<(), EnforceError> {
        let mut hash = self.listeners()?;
        hash.insert(u32::from(port), listener.as_raw_fd(), 0)
            .map_err(|source| EnforceError::Map {
                what: format!("putting the listener of port {port} in LISTENERS"),
                source,
            })
    }

    /// Moves the bound of `port`'s guard (arming it if it was not).
    pub fn set_guard_bound(
        &mut self,
        port: u16,
        bound: u32,
        mode: RejectMode,
    ) -> Result<(), EnforceError> {
        if let Some(why) = &self.guard_unavailable {
            return Err(EnforceError::Unavailable(why.clone()));
        }
        let mode = match mode {
            RejectMode::Reset => MODE_RESET,
            RejectMode::Drop => MODE_DROP,
        };
        let mut guards = self.guards()?;
        guards
            .insert(u32::from(port), Guard { bound, mode }, 0)
            .map_err(|source| EnforceError::Map {
                what: format!("setting the guard of port {port}"),
                source,
            })
    }

    /// The guards' map: port → bound and mode.
    fn guards(&mut self) -> Result<BpfHashMap<&mut MapData, u32, Guard>, EnforceError> {
        let map = self.buckets(names::MAP_GUARDS)?;
        BpfHashMap::try_from(map).map_err(|source| EnforceError::Map {
            what: names::MAP_GUARDS.into(),
            source,
        })
    }

    /// The guarded listeners' sock hash: port → listening socket.
    fn listeners(&mut self) -> Result<SockHash<&mut MapData, u32>, EnforceError> {
        let map = self.buckets(names::MAP_LISTENERS)?;
        SockHash::try_from(map).map_err(|source| EnforceError::Map {
            what: names::MAP_LISTENERS.into(),
            source,
        })
    }

    /// Disarms `port`'s guard and lets its listener go.
    pub fn clear_guard(&mut self, port: u16) -> Result<(), EnforceError> {
        let key = u32::from(port);
        let mut guards = self.guards()?;
        match guards.remove(&key) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(source) => {
                return Err(EnforceError::Map {
                    what: format!("clearing the guard of port {port}"),
                    source,
                });
            }
        }
        let mut hash = self.listeners()?;
        match hash.remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(source) => Err(EnforceError::Map {
                what: format!("removing the listener of port {port}"),
                source,
            }),
        }
    }

    /// Attaches inbound admission to the network namespace at `netns`
    /// (e.g. `/proc/self/ns/net`, `/run/netns/NAME`). Call it from a thread
    /// inside that namespace: the drop sink is created there.
    pub fn attach_netns(&mut self, netns: &Path) -> Result<(), EnforceError> {
        let io = |what: &str| {
            let what = format!("{what} ({})", netns.display());
            move |source| EnforceError::Io { what, source }
        };
        let file = File::open(netns).map_err(io("opening the network namespace"))?;
        self.make_sink(false)
            .map_err(io("creating the drop sink listener"))?;
        // Without an IPv6 sink, IPv6 clients in drop mode would be reset.
        if let Err(e) = self.make_sink(true) {
            tracing::warn!(
                "no IPv6 drop sink in {} ({e}): IPv6 clients of a port in drop mode are reset instead",
                netns.display()
            );
        }
        let prog = self.admit_program()?;
        let link = prog
            .attach(file.as_fd())
            .map_err(|source| EnforceError::Program {
                what: format!("attaching sk_lookup to {}", netns.display()),
                source,
            })?;
        self.netns = Some((netns.to_path_buf(), link));
        Ok(())
    }

    /// A listener on loopback whose accept queue is kept full, in the
    /// sockmap slot of its family (0 IPv4, 1 IPv6).
    fn make_sink(&mut self, ipv6: bool) -> std::io::Result<()> {
        use socket2::{Domain, Socket, Type};
        let (domain, addr, slot): (_, SocketAddr, u32) = if ipv6 {
            (Domain::IPV6, (std::net::Ipv6Addr::LOCALHOST, 0).into(), 1)
        } else {
            (Domain::IPV4, ([127, 0, 0, 1], 0).into(), 0)
        };
        let sock = Socket::new(domain, Type::STREAM, None)?;
        if ipv6 {
            sock.set_only_v6(true)?;
        }
        sock.bind(&addr.into())?;
        // Backlog 0 holds one connection; the one we make fills it, and every
        // SYN steered here afterwards is dropped as an overflow.
        sock.listen(0)?;
        let local = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("sink has no inet address"))?;
        let filler = TcpStream::connect_timeout(&local, std::time::Duration::from_secs(2))?;
        let map = self
            .ebpf
            .map_mut(names::MAP_DROP_SINK)
            .ok_or_else(|| std::io::Error::other("DROP_SINK map missing"))?;
        let mut sockmap: SockMap<&mut MapData> =
            SockMap::try_from(map).map_err(std::io::Error::other)?;
        sockmap.set(slot, &sock, 0).map_err(std::io::Error::other)?;
        self.sinks.push((sock, filler));
        Ok(())
    }

    /// Attaches outbound admission (`connect4`/`connect6`) to the cgroup
    /// directory `dir` (cgroup2). Other programs on the cgroup keep running.
    pub fn attach_cgroup(&mut self, dir: &Path) -> Result<(), EnforceError> {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(dir)
            .map_err(|source| EnforceError::Io {
                what: format!("reading cgroup {}", dir.display()),
                source,
            })?
            .ino();
        if self.cgroups.contains_key(&id) {
            return Ok(());
        }
        let mut links = Vec::with_capacity(2);
        for name in [names::PROG_CONNECT4, names::PROG_CONNECT6] {
            let file = File::open(dir).map_err(|source| EnforceError::Io {
                what: format!("opening cgroup {}", dir.display()),
                source,
            })?;
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(EnforceError::Missing(name))?
                .try_into()
                .map_err(|source| EnforceError::Program {
                    what: name.into(),
                    source,
                })?;
            if prog.fd().is_err() {
                prog.load().map_err(|source| EnforceError::Program {
                    what: format!("loading {name}"),
                    source,
                })?;
            }
            let link = prog
                // Links (kernel ≥ 5.7) always run beside the cgroup's other
                // programs; the mode flags are for legacy attachment only.
                .attach(file.as_fd(), CgroupAttachMode::Single)
                .map_err(|source| EnforceError::Program {
                    what: format!("attaching {name} to {}", dir.display()),
                    source,
                })?;
            links.push(link);
        }
        let [a, b]: [CgroupSockAddrLinkId; 2] = links
            .try_into()
            .map_err(|_| EnforceError::Missing("connect link"))?;
        self.cgroups.insert(id, (dir.to_path_buf(), [a, b]));
        Ok(())
    }

    /// Detaches outbound admission from `dir`.
    pub fn detach_cgroup(&mut self, dir: &Path) -> Result<(), EnforceError> {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(dir).ok().map(|m| m.ino());
        let Some((_, [a, b])) = id.and_then(|id| self.cgroups.remove(&id)) else {
            // Not attached to this cgroup (or it is gone, taking its
            // programs with it): entries of earlier cgroups at the path go.
            self.cgroups.retain(|_, (path, _)| path != dir);
            return Ok(());
        };
        for (name, link) in [(names::PROG_CONNECT4, a), (names::PROG_CONNECT6, b)] {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(EnforceError::Missing(name))?
                .try_into()
                .map_err(|source| EnforceError::Program {
                    what: name.into(),
                    source,
                })?;
            prog.detach(link).map_err(|source| EnforceError::Program {
                what: format!("detaching {name} from {}", dir.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// What the programs are attached to, held open so that once the
    /// enforcer is dropped the kernel can be asked whether any of them is
    /// still attached there ([`Attachments::check`]). Asking each target
    /// needs only CAP_NET_ADMIN, which the agent has (listing every loaded
    /// program would need CAP_SYS_ADMIN, which the unit does not give).
    pub fn attachments(&self) -> Attachments {
        let ids = [
            names::PROG_ADMIT,
            names::PROG_CONNECT4,
            names::PROG_CONNECT6,
        ]
        .iter()
        .filter_map(|n| self.ebpf.program(n)?.info().ok())
        .map(|i| i.id())
        .collect();
        let mut targets = Vec::new();
        if let Some((path, _)) = &self.netns
            && let Ok(f) = File::open(path)
        {
            targets.push((
                format!("network namespace {}", path.display()),
                f,
                ATTACH_SK_LOOKUP,
            ));
        }
        // A cgroup made again at a path has an entry per id: ask it once.
        let paths: std::collections::BTreeSet<&PathBuf> =
            self.cgroups.values().map(|(p, _)| p).collect();
        for path in paths {
            if let Ok(f) = File::open(path) {
                for t in [ATTACH_CGROUP_INET4_CONNECT, ATTACH_CGROUP_INET6_CONNECT] {
                    if let Ok(f) = f.try_clone() {
                        targets.push((format!("cgroup {}", path.display()), f, t));
                    }
                }
            }
        }
        Attachments { ids, targets }
    }

    fn buckets(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, EnforceError> {
        self.ebpf.map_mut(name).ok_or(EnforceError::Missing(name))
    }

    /// Replaces the exemption keys `old` with `new`: the new ones first, so
    /// that a failure midway (a full trie) takes back what it added and
    /// leaves `old` in force, then the old ones that are not kept.
    fn set_exempt(
        &mut self,
        old: &[Key<ExemptData>],
        new: &[Key<ExemptData>],
    ) -> Result<(), EnforceError> {
        let same = |a: &Key<ExemptData>, b: &Key<ExemptData>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        let map = self.buckets(names::MAP_EXEMPT)?;
        let mut trie: LpmTrie<&mut MapData, ExemptData, u8> =
            LpmTrie::try_from(map).map_err(|source| EnforceError::Map {
                what: "EXEMPT".into(),
                source,
            })?;
        for (i, k) in new.iter().enumerate() {
            if let Err(source) = trie.insert(k, 1, 0) {
                for added in new[..i].iter().filter(|a| !old.iter().any(|o| same(o, a))) {
                    let _ = trie.remove(added);
                }
                return Err(EnforceError::Map {
                    what: format!("adding exemption {} of {}", i + 1, new.len()),
                    source,
                });
            }
        }
        for k in old.iter().filter(|o| !new.iter().any(|n| same(n, o))) {
            let _ = trie.remove(k);
        }
        Ok(())
    }

    /// Puts `rule` (or, with `None`, no rule) in force for one key of one
    /// bucket map, with its exemptions under `scope`.
    fn set_rule<K: aya::Pod>(
        &mut self,
        map_name: &'static str,
        key: K,
        scope: [u8; 8],
        rule: Option<&Rule>,
        what: String,
    ) -> Result<(), EnforceError> {
        let keys = rule.map_or_else(Vec::new, |r| exempt_keys(scope, &r.exempt));
        let old = self.exempt_of.get(&scope).cloned().unwrap_or_default();
        // A failure leaves the rule in force with its exemptions.
        self.set_exempt(&old, &keys)?;
        if rule.is_some() {
            self.exempt_of.insert(scope, keys);
        } else {
            self.exempt_of.remove(&scope);
        }
        let map = self.buckets(map_name)?;
        let capacity = match &*map {
            aya::maps::Map::HashMap(m) => m.info().ok().map(|i| i.max_entries()),
            _ => None,
        };
        let mut buckets: BpfHashMap<&mut MapData, K, Bucket> =
            BpfHashMap::try_from(map).map_err(|source| EnforceError::Map {
                what: map_name.into(),
                source,
            })?;
        let result = match rule {
            Some(r) => buckets.insert(key, r.bucket(0), 0),
            None => match buckets.remove(&key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            },
        };
        result.map_err(|source| {
            let verb = if rule.is_some() {
                "setting"
            } else {
                "clearing"
            };
            let full = match &source {
                aya::maps::MapError::SyscallError(e)
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    capacity.map_or_else(
                        || ": the map is full".to_owned(),
                        |n| format!(": the map is full (at most {n} rules)"),
                    )
                }
                _ => String::new(),
            };
            EnforceError::Map {
                what: format!("{verb} the rule of {what} in {map_name}{full}"),
                source,
            }
        })
    }

    /// Admits new connections to local `port` by `rule` (replacing any rule).
    pub fn set_port(&mut self, port: u16, rule: &Rule) -> Result<(), EnforceError> {
        let what = format!("port {port}");
        self.set_rule(
            names::MAP_PORT_BUCKETS,
            u32::from(port),
            port_scope(port),
            Some(rule),
            what,
        )
    }

    /// Removes the rule of `port`: every connection is admitted again.
    pub fn clear_port(&mut self, port: u16) -> Result<(), EnforceError> {
        let what = format!("port {port}");
        self.set_rule(
            names::MAP_PORT_BUCKETS,
            u32::from(port),
            port_scope(port),
            None,
            what,
        )
    }

    /// Admits outbound connects of cgroup `id` (and below) by `rule`. The
    /// programs must be attached to that cgroup (or an ancestor).
    pub fn set_cgroup(&mut self, id: u64, rule: &Rule) -> Result<(), EnforceError> {
        let what = format!("cgroup {id}");
        self.set_rule(
            names::MAP_CGROUP_BUCKETS,
            id,
            cgroup_scope(id),
            Some(rule),
            what,
        )
    }

    /// Removes the rule of cgroup `id`.
    pub fn clear_cgroup(&mut self, id: u64) -> Result<(), EnforceError> {
        let what = format!("cgroup {id}");
        self.set_rule(names::MAP_CGROUP_BUCKETS, id, cgroup_scope(id), None, what)
    }

    /// Every entry of a per-CPU verdicts map, summed over CPUs.
    fn verdicts<K: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, Verdicts)>, EnforceError> {
        let map = self.ebpf.map(name).ok_or(EnforceError::Missing(name))?;
        let m: PerCpuHashMap<&MapData, K, Verdicts> =
            PerCpuHashMap::try_from(map).map_err(|source| EnforceError::Map {
                what: name.into(),
                source,
            })?;
        Ok(m.iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, sum(v.iter())))
            .collect())
    }

    /// Admitted and refused connections per port, summed over CPUs.
    pub fn port_verdicts(&self) -> Result<HashMap<u16, Verdicts>, EnforceError> {
        Ok(self
            .verdicts::<u32>(names::MAP_PORT_VERDICTS)?
            .into_iter()
            .filter_map(|(port, v)| Some((u16::try_from(port).ok()?, v)))
            .collect())
    }

    /// Admitted and refused outbound connects per cgroup id, cumulative
    /// since the programs were loaded.
    pub fn cgroup_verdicts(&self) -> Result<HashMap<u64, Verdicts>, EnforceError> {
        Ok(self
            .verdicts::<u64>(names::MAP_CGROUP_VERDICTS)?
            .into_iter()
            .collect())
    }
}

/// Whether a map delete failed only because the key was not there.
fn not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A duplicate of the listening socket with inode `inode` (as sock_diag
/// and `/proc/PID/fd` show it), taken from the process that holds it:
/// `/proc/*/fd` under `proc_root` is scanned for `socket:[inode]`, then the
/// fd is copied with `pidfd_open` + `pidfd_getfd` (Linux 5.6; needs
/// ptrace access to the owner, which root has). The duplicate shares the
/// socket: the guard sees the server's own accept queue.
pub fn listener_fd(proc_root: &Path, inode: u64) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(proc_root)?.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let hit = std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str());
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if !hit {
                continue;
            }
            // SAFETY: plain syscalls; each fd returned is new and owned here.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
                if pidfd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
                let got = libc::syscall(
                    libc::SYS_pidfd_getfd,
                    std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                    num,
                    0,
                );
                if got < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                return Ok(OwnedFd::from_raw_fd(got as i32));
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no process holds {want}"),
    ))
}

// `enum bpf_attach_type` values of the kernel's UAPI (stable ABI numbers,
// not struct layouts).
const ATTACH_CGROUP_INET4_CONNECT: u32 = 10;
const ATTACH_CGROUP_INET6_CONNECT: u32 = 11;
const ATTACH_SK_LOOKUP: u32 = 36;
const BPF_PROG_QUERY: libc::c_long = 16;

/// The enforcement programs' ids and the targets they were attached to,
/// each held open (see [`NetEnforcer::attachments`]).
pub struct Attachments {
    ids: Vec<u32>,
    targets: Vec<(String, File, u32)>,
}

/// What [`Attachments::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachCheck {
    /// Targets asked (a cgroup counts once per attach type).
    pub asked: usize,
    /// `(target, program id)` of ours still attached.
    pub attached: Vec<(String, u32)>,
    /// Targets that could not be asked, with the reason.
    pub unasked: Vec<String>,
}

impl Attachments {
    /// Number of our programs and of the targets to ask.
    pub fn len(&self) -> (usize, usize) {
        (self.ids.len(), self.targets.len())
    }

    /// Whether nothing was ever attached.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Asks each target which programs are attached to it (BPF_PROG_QUERY)
    /// and reports those that are ours.
    pub fn check(&self) -> DetachCheck {
        let mut out = DetachCheck {
            asked: 0,
            attached: Vec::new(),
            unasked: Vec::new(),
        };
        for (what, f, attach_type) in &self.targets {
            match prog_query(f, *attach_type) {
                Ok(ids) => {
                    out.asked += 1;
                    out.attached.extend(
                        ids.into_iter()
                            .filter(|id| self.ids.contains(id))
                            .map(|id| (what.clone(), id)),
                    );
                }
                // The cgroup was removed: nothing can be attached to it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => out.asked += 1,
                Err(e) => out.unasked.push(format!("{what}: {e}")),
            }
        }
        out
    }
}

/// The ids of the programs attached to `target` for `attach_type`
/// (`BPF_PROG_QUERY`; effective programs are not asked for, only those
/// attached at the target itself).
fn prog_query(target: &File, attach_type: u32) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd as _;
    // The `query` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut ids = vec![0u32; 64];
    loop {
        let mut q = Query {
            target_fd: u32::try_from(target.as_raw_fd()).unwrap_or(u32::MAX),
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ..Query::default()
        };
        // SAFETY: `q` is a valid `bpf_attr` prefix of the size given, and
        // `prog_ids` points at `prog_cnt` writable u32s that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &raw mut q,
                std::mem::size_of::<Query>() as libc::c_uint,
            )
        };
        let count = q.prog_cnt as usize;
        if r == 0 {
            ids.truncate(count.min(ids.len()));
            return Ok(ids);
        }
        let e = std::io::Error::last_os_error();
        // More programs than room: the kernel said how many.
        if e.raw_os_error() == Some(libc::ENOSPC) && count > ids.len() {
            ids.resize(count, 0);
            continue;
        }
        return Err(e);
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a Verdicts>) -> Verdicts {
    values.fold(Verdicts::default(), |a, v| Verdicts {
        admitted: a.admitted + v.admitted,
        refused: a.refused + v.refused,
        dropped: a.dropped + v.dropped,
        guarded: a.guarded + v.guarded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_rate_burst_and_reject() {
        let r = Rule {
            rate: Some(200.0),
            burst: 10,
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        let b = r.bucket(0);
        assert_eq!(b.interval_ns, 5_000_000);
        assert_eq!(b.tolerance_ns, 45_000_000);
        assert_eq!(b.flags, 0);
        let reject = Rule {
            rate: None,
            burst: 0,
            mode: RejectMode::Drop,
            exempt: vec![],
        }
        .bucket(0);
        assert_eq!(reject.flags, FLAG_REJECT_ALL);
        assert_eq!(reject.mode, MODE_DROP);
    }

    #[test]
    fn exemption_keys_map_ipv4_into_ipv6() {
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let keys = exempt_keys(port_scope(8080), &nets);
        assert_eq!(keys[0].prefix_len(), 64 + 96 + 8);
        assert_eq!(
            &keys[0].data()[8..],
            &Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0]).octets()
        );
        assert_eq!(&keys[0].data()[..8], &[1, 0, 0, 0, 0, 0, 0x1f, 0x90]);
        assert_eq!(keys[1].prefix_len(), 64 + 32);
    }
}
