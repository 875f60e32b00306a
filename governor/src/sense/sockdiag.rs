//! TCP listeners' accept queues, read with sock_diag netlink
//! (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`), IPv4 and IPv6.
//!
//! For a socket in LISTEN state the kernel reports the accept-queue length
//! as `idiag_rqueue` and the backlog (`sk_max_ack_backlog`) as
//! `idiag_wqueue`. A queue is full, and the next completed handshake
//! overflows, when its length exceeds the backlog: on Linux a listener with
//! backlog `n` holds `n + 1` connections.
//!
//! **Network namespace.** A netlink socket belongs to the network namespace
//! of the thread that created it, and answers for that namespace only.
//! [`SockDiag::new`] therefore reads the namespace current when it is called;
//! to read another one, create it in a thread that has `setns`'d into that
//! namespace (it keeps reading that namespace afterwards, from any thread).

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// A sock_diag problem, naming the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The netlink socket could not be opened.
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {source}")]
    Open {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Sending the dump request or receiving its answer failed.
    #[error("sock_diag dump of {family} TCP listeners: {source}")]
    Io {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered the request with an error.
    #[error("sock_diag dump of {family} TCP listeners: the kernel answered {source}")]
    Kernel {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The answer could not be decoded.
    #[error("sock_diag dump of {family} TCP listeners: cannot decode the answer: {reason}")]
    Decode {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// What could not be decoded.
        reason: String,
    },
}

/// One listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Local address and port.
    pub local: SocketAddr,
    /// Connections waiting to be accepted (`idiag_rqueue`).
    pub accept_queue: u32,
    /// The listen backlog (`idiag_wqueue`).
    pub accept_queue_max: u32,
    /// Socket inode number.
    pub inode: u32,
}

impl Listener {
    /// True if the next completed handshake overflows this queue.
    pub fn is_full(&self) -> bool {
        self.accept_queue > self.accept_queue_max
    }
}

/// The accept queues of all listeners of one local port, summed: listeners
/// sharing a port with `SO_REUSEPORT`, on several addresses, or on IPv4 and
/// IPv6, all take that port's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenQueue {
    /// Local port.
    pub port: u16,
    /// Connections waiting to be accepted, summed over the listeners.
    pub accept_queue: u32,
    /// Backlogs, summed over the listeners.
    pub accept_queue_max: u32,
    /// How many listening sockets the port has.
    pub listeners: u32,
    /// True if at least one of them is full (so the port is dropping
    /// handshakes even if the sum is below the summed limit).
    pub any_full: bool,
}

/// The accept queues of a namespace by local port.
pub type QueuesByPort = BTreeMap<u16, ListenQueue>;

/// Sums listeners per local port.
pub fn per_port(listeners: &[Listener]) -> QueuesByPort {
    let mut ports: BTreeMap<u16, ListenQueue> = BTreeMap::new();
    for l in listeners {
        let q = ports.entry(l.local.port()).or_insert(ListenQueue {
            port: l.local.port(),
            ..ListenQueue::default()
        });
        q.accept_queue = q.accept_queue.saturating_add(l.accept_queue);
        q.accept_queue_max = q.accept_queue_max.saturating_add(l.accept_queue_max);
        q.listeners += 1;
        q.any_full |= l.is_full();
    }
    ports
}

/// A sock_diag socket of the network namespace it was created in.
#[derive(Debug)]
pub struct SockDiag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Large enough for any datagram of a dump: the kernel caps its dump
/// buffers at 32 KiB.
const RECV_BUF: usize = 64 * 1024;

impl SockDiag {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    /// Needs no privilege.
    pub fn new() -> Result<Self, SockDiagError> {
        let open = |source| SockDiagError::Open { source };
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(open)?;
        socket.bind_auto().map_err(open)?;
        socket.connect(&NetlinkAddr::new(0, 0)).map_err(open)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Every TCP socket in LISTEN state, IPv4 then IPv6.
    pub fn listeners(&mut self) -> Result<Vec<Listener>, SockDiagError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, &mut out)?;
        }
        Ok(out)
    }

    /// Accept queues per local port ([`per_port`] of [`Self::listeners`]).
    pub fn listen_queues(&mut self) -> Result<QueuesByPort, SockDiagError> {
        Ok(per_port(&self.listeners()?))
    }

    fn dump(&mut self, family: u8, out: &mut Vec<Listener>) -> Result<(), SockDiagError> {
        let name = family_name(family);
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let io = |source| SockDiagError::Io {
            family: name,
            source,
        };
        self.socket.send(&request(family, seq), 0).map_err(io)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0).map_err(io)?;
            if n > self.buf.len() {
                return Err(SockDiagError::Decode {
                    family: name,
                    reason: format!("datagram of {n} bytes truncated to {}", self.buf.len()),
                });
            }
            if parse_datagram(&self.buf[..n], family, seq, out)? {
                return Ok(());
            }
        }
    }
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET6 { "IPv6" } else { "IPv4" }
}

/// The dump request for TCP sockets of `family` in LISTEN state (the kernel
/// filters by state, so established connections are never sent).
fn request(family: u8, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: if family == AF_INET6 {
                SocketId::new_v6()
            } else {
                SocketId::new_v4()
            },
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Parses one datagram of a dump answer into `out`; true once the dump is
/// done. Messages of other requests (other sequence numbers) are skipped.
/// Public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_datagram(
    mut bytes: &[u8],
    family: u8,
    seq: u32,
    out: &mut Vec<Listener>,
) -> Result<bool, SockDiagError> {
    let name = family_name(family);
    let decode = |reason: String| SockDiagError::Decode {
        family: name,
        reason,
    };
    while !bytes.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|e| decode(e.to_string()))?;
        let len = msg.header.length as usize;
        if len == 0 || len > bytes.len() {
            return Err(decode(format!(
                "message length {len} with {} bytes left",
                bytes.len()
            )));
        }
        // Messages are 4-byte aligned within a datagram.
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        if msg.header.sequence_number != seq {
            continue;
        }
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                // The kernel sends -errno. Not `e.to_io()`: its `abs()`
                // overflows on i32::MIN, a panic in debug builds (found by
                // `cargo xtask fuzz sockdiag`).
                return Err(SockDiagError::Kernel {
                    family: name,
                    source: io::Error::from_raw_os_error(e.raw_code().saturating_abs()),
                });
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                if let Some(l) = listener(&r.header) {
                    out.push(l);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

fn listener(h: &InetResponseHeader) -> Option<Listener> {
    if h.state != TCP_LISTEN {
        return None;
    }
    let addr: IpAddr = h.socket_id.source_address;
    Some(Listener {
        local: SocketAddr::new(addr, h.socket_id.source_port),
        accept_queue: h.recv_queue,
        accept_queue_max: h.send_queue,
        inode: h.inode,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use netlink_packet_core::{DoneMessage, NLM_F_MULTIPART};
    use netlink_packet_sock_diag::{constants::SOCK_DIAG_BY_FAMILY, inet::InetResponse};

    use super::*;

    fn ne(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn request_asks_for_tcp_listeners_of_the_family() {
        for (family, seq) in [(AF_INET, 7), (AF_INET6, 8)] {
            let b = request(family, seq);
            // nlmsghdr (16) + inet_diag_req_v2 (56).
            assert_eq!(b.len(), 72);
            assert_eq!(ne(&b, 0), 72, "nlmsg_len");
            assert_eq!(u16::from_ne_bytes([b[4], b[5]]), SOCK_DIAG_BY_FAMILY);
            assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST | NLM_F_DUMP);
            assert_eq!(ne(&b, 8), seq);
            assert_eq!((b[16], b[17]), (family, IPPROTO_TCP));
            assert_eq!(ne(&b, 20), 1 << TCP_LISTEN, "idiag_states: LISTEN only");
        }
    }

    fn response(
        seq: u32,
        family: u8,
        state: u8,
        addr: &str,
        port: u16,
        rq: u32,
        wq: u32,
    ) -> Vec<u8> {
        let ip: IpAddr = addr.parse().unwrap();
        let mut id = if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        };
        id.source_address = ip;
        id.source_port = port;
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = NLM_F_MULTIPART;
        let mut msg = NetlinkMessage::new(
            header,
            SockDiagMessage::InetResponse(Box::new(InetResponse {
                header: InetResponseHeader {
                    family,
                    state,
                    timer: None,
                    socket_id: id,
                    recv_queue: rq,
                    send_queue: wq,
                    uid: 0,
                    inode: 1234,
                },
                nlas: Default::default(),
            }))
            .into(),
        );
        msg.finalize();
        let mut b = vec![0; msg.buffer_len()];
        msg.serialize(&mut b);
        b
    }

    fn done(seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = NLM_F_MULTIPART;
        let mut msg = NetlinkMessage::<SockDiagMessage>::new(
            header,
            NetlinkPayload::Done(DoneMessage::default()),
        );
        msg.finalize();
        let mut b = vec![0; msg.buffer_len()];
        msg.serialize(&mut b);
        b
    }

    #[test]
    fn parses_a_dump_datagram() {
        let mut dgram = response(3, AF_INET6, TCP_LISTEN, "::1", 8080, 9, 8);
        dgram.extend(response(3, AF_INET6, TCP_LISTEN, "::", 443, 0, 4096));
        // Another request's leftovers, and a non-listener, are skipped.
        dgram.extend(response(2, AF_INET6, TCP_LISTEN, "::", 22, 1, 1));
        dgram.extend(response(3, AF_INET6, 1, "::1", 8080, 5, 5));
        let mut out = Vec::new();
        assert!(!parse_datagram(&dgram, AF_INET6, 3, &mut out).unwrap());
        assert_eq!(
            out,
            [
                Listener {
                    local: "[::1]:8080".parse().unwrap(),
                    accept_queue: 9,
                    accept_queue_max: 8,
                    inode: 1234
                },
                Listener {
                    local: "[::]:443".parse().unwrap(),
                    accept_queue: 0,
                    accept_queue_max: 4096,
                    inode: 1234
                },
            ]
        );
        assert!(out[0].is_full() && !out[1].is_full());
        assert!(parse_datagram(&done(3), AF_INET6, 3, &mut out).unwrap());
        assert!(
            !parse_datagram(&done(2), AF_INET6, 3, &mut out).unwrap(),
            "other request's done"
        );
        assert!(parse_datagram(&[1, 2, 3], AF_INET, 3, &mut out).is_err());
    }

    #[test]
    fn a_kernel_error_of_any_code_is_an_error() {
        // NLMSG_ERROR: header, -errno, the request's header.
        let error = |code: i32| {
            let mut b = [36u32.to_ne_bytes(), [2, 0, 0, 0], 3u32.to_ne_bytes()].concat();
            b.extend([0; 4].iter().chain(&code.to_ne_bytes()).chain(&[0; 16]));
            b
        };
        let kernel = |code| match parse_datagram(&error(code), AF_INET, 3, &mut Vec::new()) {
            Err(SockDiagError::Kernel { source, .. }) => source.raw_os_error(),
            other => panic!("{other:?}"),
        };
        assert_eq!(kernel(-libc::EPERM), Some(libc::EPERM));
        // Not an overflow (fuzz/corpus/sockdiag/error-i32-min).
        assert_eq!(kernel(i32::MIN), Some(i32::MAX));
    }

    #[test]
    fn sums_listeners_per_port() {
        let l = |addr: &str, rq, wq| Listener {
            local: addr.parse().unwrap(),
            accept_queue: rq,
            accept_queue_max: wq,
            inode: 0,
        };
        let got = per_port(&[
            l("0.0.0.0:8080", 9, 8), // full
            l("0.0.0.0:8080", 0, 8), // its SO_REUSEPORT sibling
            l("[::]:8080", 1, 16),
            l("127.0.0.1:53", 0, 4),
        ]);
        assert_eq!(
            got.into_values().collect::<Vec<_>>(),
            [
                ListenQueue {
                    port: 53,
                    accept_queue: 0,
                    accept_queue_max: 4,
                    listeners: 1,
                    any_full: false
                },
                ListenQueue {
                    port: 8080,
                    accept_queue: 10,
                    accept_queue_max: 32,
                    listeners: 3,
                    any_full: true
                },
            ]
        );
    }

    #[test]
    fn sees_a_listener_of_this_process() {
        // Needs no privilege: any process may dump its own namespace's sockets.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let all = SockDiag::new().unwrap().listeners().unwrap();
        let mine: Vec<_> = all.iter().filter(|l| l.local.port() == port).collect();
        assert_eq!(mine.len(), 1, "{all:?}");
        assert_eq!(mine[0].local, listener.local_addr().unwrap());
        assert_eq!(mine[0].accept_queue, 0);
        assert!(mine[0].accept_queue_max > 0);
    }
}
