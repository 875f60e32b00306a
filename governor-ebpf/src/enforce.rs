//! governor's enforcement programs: admission of new connections.
//!
//! - Inbound, per local port: an `sk_lookup` program, attached to one
//!   network namespace. It runs only when the kernel looks for a *listening*
//!   socket for a new connection (a SYN), never for established ones, and
//!   exits at once for ports no policy names. Over the rate, `reset` returns
//!   `SK_DROP`, which the kernel answers with RST (ECONNREFUSED at once);
//!   `drop` steers the SYN to a sink listener whose accept queue is full, so
//!   it is dropped silently and the client retries after its timeout.
//! - Outbound, per cgroup: `cgroup/connect4` and `connect6` programs attached
//!   to the named cgroups only; over the rate `connect()` fails with `EPERM`.
//!
//! Rates are GCRA token buckets in hash maps; user space only writes the
//! rate. Exempt peers (an LPM trie) always pass.
//!
//! - The guard, per local port: before the bucket, the listener's accept
//!   queue (`sk_ack_backlog`, read from the listener the agent put in
//!   `LISTENERS`, at an offset resolved from BTF and set as a read-only
//!   global) is compared with the port's bound in `GUARDS`; at or above it
//!   the SYN is refused (RST, or dropped through the sink) and counted as
//!   `guarded`. With `GUARD_READY` 0 (the loader's default) the verifier
//!   prunes the guard's code, so kernels that lack a piece still load the
//!   rest.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_ns,
        bpf_map_lookup_elem, bpf_sk_release, bpf_skc_to_tcp_sock,
    },
    macros::{cgroup_sock_addr, map, sk_lookup},
    maps::{HashMap, LpmTrie, PerCpuHashMap, SockHash, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, SockAddrContext},
};
use governor_common::enforce::{
    Bucket, ExemptData, FLAG_REJECT_ALL, Guard, MODE_DROP, Verdicts, cgroup_scope, port_scope,
};

const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// How many cgroup levels above the connecting task are searched for a bucket.
const MAX_DEPTH: i32 = 16;

#[map(name = "PORT_BUCKETS")]
static PORT_BUCKETS: HashMap<u32, Bucket> = HashMap::with_max_entries(4096, 0);

#[map(name = "CGROUP_BUCKETS")]
static CGROUP_BUCKETS: HashMap<u64, Bucket> = HashMap::with_max_entries(4096, 0);

#[map(name = "PORT_VERDICTS")]
static PORT_VERDICTS: PerCpuHashMap<u32, Verdicts> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "CGROUP_VERDICTS")]
static CGROUP_VERDICTS: PerCpuHashMap<u64, Verdicts> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "EXEMPT")]
static EXEMPT: LpmTrie<ExemptData, u8> = LpmTrie::with_max_entries(4096, 1); // BPF_F_NO_PREALLOC, required by LPM tries

/// The drop sinks: 0 an IPv4 listener, 1 an IPv6 one (a lookup can only be
/// steered to a socket of its own family).
#[map(name = "DROP_SINK")]
static DROP_SINK: SockMap = SockMap::with_max_entries(2, 0);

/// Guards by local port (`u32`): the accept-queue bound.
#[map(name = "GUARDS")]
static GUARDS: HashMap<u32, Guard> = HashMap::with_max_entries(1024, 0);

/// The guarded ports' listeners, by local port (`u32`), put here by the agent.
#[map(name = "LISTENERS")]
static LISTENERS: SockHash<u32> = SockHash::with_max_entries(1024, 0);

/// `struct sock.sk_ack_backlog` offset, from BTF (read-only: the verifier
/// reads it as a constant, which a load through a BTF pointer needs).
#[unsafe(no_mangle)]
static OFF_SK_ACK_BACKLOG: u32 = 0;
/// 1 once the offset above is set and the kernel has every piece.
#[unsafe(no_mangle)]
static GUARD_READY: u32 = 0;

#[inline(always)]
fn global(v: &u32) -> u32 {
    // SAFETY: a read of a read-only global the loader patched in.
    unsafe { core::ptr::read_volatile(v) }
}

/// The accept-queue depth of `port`'s listener, if the agent gave one.
#[inline(always)]
fn queue_depth(port: u32) -> Option<u32> {
    let key = port;
    // SAFETY: a sock-hash lookup returns a referenced socket or null; it is
    // released on every path below. `bpf_skc_to_tcp_sock` gives a BTF
    // pointer (or null) the verifier checks loads through, at a constant
    // offset that BTF says is a `u32` of `struct sock` (the first member of
    // `struct tcp_sock`).
    unsafe {
        let sk = bpf_map_lookup_elem(
            core::ptr::from_ref(&LISTENERS).cast_mut().cast(),
            core::ptr::from_ref(&key).cast(),
        );
        if sk.is_null() {
            return None;
        }
        let tp = bpf_skc_to_tcp_sock(sk).cast::<u8>();
        let depth = if tp.is_null() {
            None
        } else {
            let off = global(&OFF_SK_ACK_BACKLOG) as usize;
            Some(core::ptr::read_volatile(tp.add(off).cast::<u32>()))
        };
        bpf_sk_release(sk);
        depth
    }
}

/// GCRA admission; racing CPUs may admit a few extra at most.
#[inline(always)]
fn admit(b: *mut Bucket, now: u64) -> bool {
    // SAFETY: `b` is a value pointer from a hash lookup.
    unsafe {
        if (*b).flags & FLAG_REJECT_ALL != 0 {
            return false;
        }
        let tat = (*b).tat_ns;
        if now < tat.saturating_sub((*b).tolerance_ns) {
            return false;
        }
        let start = if tat > now { tat } else { now };
        (*b).tat_ns = start + (*b).interval_ns;
    }
    true
}

const ADMITTED: u8 = 0;
const REFUSED: u8 = 1;
const DROPPED: u8 = 2;
const GUARDED: u8 = 3;

#[inline(always)]
fn count<K>(map: &PerCpuHashMap<K, Verdicts>, key: &K, verdict: u8) {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value.
        unsafe {
            match verdict {
                ADMITTED => (*v).admitted += 1,
                REFUSED => (*v).refused += 1,
                DROPPED => (*v).dropped += 1,
                _ => (*v).guarded += 1,
            }
        }
    } else {
        let v = Verdicts {
            admitted: u64::from(verdict == ADMITTED),
            refused: u64::from(verdict == REFUSED),
            dropped: u64::from(verdict == DROPPED),
            guarded: u64::from(verdict == GUARDED),
        };
        let _ = map.insert(key, v, 0);
    }
}

/// Builds the exemption key: scope, then the peer as an IPv6 address.
#[inline(always)]
fn exempt(scope: [u8; 8], family: u32, ip4: u32, ip6: [u32; 4]) -> bool {
    let mut data = [0u8; 24];
    let mut i = 0;
    while i < 8 {
        data[i] = scope[i];
        i += 1;
    }
    if family == AF_INET {
        // ::ffff:a.b.c.d; ip4 is in network order in memory.
        data[18] = 0xff;
        data[19] = 0xff;
        let b = ip4.to_ne_bytes();
        data[20] = b[0];
        data[21] = b[1];
        data[22] = b[2];
        data[23] = b[3];
    } else {
        let mut w = 0;
        while w < 4 {
            let b = ip6[w].to_ne_bytes();
            data[8 + w * 4] = b[0];
            data[8 + w * 4 + 1] = b[1];
            data[8 + w * 4 + 2] = b[2];
            data[8 + w * 4 + 3] = b[3];
            w += 1;
        }
    }
    EXEMPT.get(Key::new(192, data)).is_some()
}

#[sk_lookup]
pub fn admit_inbound(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context is the kernel's bpf_sk_lookup, read field by field.
    let (protocol, port, family, ip4, ip6) = unsafe {
        let l = &*ctx.lookup;
        (
            l.protocol,
            l.local_port,
            l.family,
            l.remote_ip4,
            l.remote_ip6,
        )
    };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let guard = if global(&GUARD_READY) != 0 {
        GUARDS.get_ptr(port)
    } else {
        None
    };
    let bucket = PORT_BUCKETS.get_ptr_mut(port);
    if guard.is_none() && bucket.is_none() {
        return SK_PASS;
    }
    if exempt(port_scope(port as u16), family, ip4, ip6) {
        count(&PORT_VERDICTS, &port, ADMITTED);
        return SK_PASS;
    }
    let sink = if family == AF_INET6 { 1 } else { 0 };
    if let Some(g) = guard {
        // SAFETY: a value pointer from a hash lookup.
        let (bound, mode) = unsafe { ((*g).bound, (*g).mode) };
        // No listener (not yet acquired, or closed): the guard holds back.
        if queue_depth(port).is_some_and(|depth| depth >= bound) {
            if mode == MODE_DROP && DROP_SINK.redirect_sk_lookup(&ctx, sink, 0).is_ok() {
                count(&PORT_VERDICTS, &port, GUARDED);
                return SK_PASS;
            }
            count(&PORT_VERDICTS, &port, GUARDED);
            return SK_DROP;
        }
    }
    let Some(b) = bucket else {
        count(&PORT_VERDICTS, &port, ADMITTED);
        return SK_PASS;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if admit(b, now) {
        count(&PORT_VERDICTS, &port, ADMITTED);
        return SK_PASS;
    }
    // SAFETY: as above.
    if unsafe { (*b).mode } == MODE_DROP && DROP_SINK.redirect_sk_lookup(&ctx, sink, 0).is_ok() {
        // Steered into the full sink: the SYN is dropped, the client retries.
        count(&PORT_VERDICTS, &port, DROPPED);
        return SK_PASS;
    }
    count(&PORT_VERDICTS, &port, REFUSED);
    SK_DROP
}

/// The bucket of the connecting task's cgroup or its nearest ancestor.
#[inline(always)]
fn cgroup_bucket() -> Option<(u64, *mut Bucket)> {
    // SAFETY: no preconditions.
    let own = unsafe { bpf_get_current_cgroup_id() };
    if let Some(b) = CGROUP_BUCKETS.get_ptr_mut(own) {
        return Some((own, b));
    }
    let mut level = MAX_DEPTH;
    while level > 0 {
        level -= 1;
        // SAFETY: no preconditions; 0 means "no ancestor at that level".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id != 0
            && let Some(b) = CGROUP_BUCKETS.get_ptr_mut(id)
        {
            return Some((id, b));
        }
    }
    None
}

/// `v6`: the program is `connect6`; each variant may read only its own
/// address fields of the context.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    // SAFETY: the context is the kernel's bpf_sock_addr, read field by field.
    let (protocol, family, ip4, ip6) = unsafe {
        let s = &*ctx.sock_addr;
        if v6 {
            (s.protocol, s.user_family, 0, s.user_ip6)
        } else {
            (s.protocol, s.user_family, s.user_ip4, [0; 4])
        }
    };
    if protocol != IPPROTO_TCP {
        return 1;
    }
    let Some((id, b)) = cgroup_bucket() else {
        return 1;
    };
    if exempt(cgroup_scope(id), family, ip4, ip6) {
        count(&CGROUP_VERDICTS, &id, ADMITTED);
        return 1;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let ok = admit(b, now);
    count(&CGROUP_VERDICTS, &id, if ok { ADMITTED } else { REFUSED });
    // 0 makes connect() fail with EPERM at once.
    i32::from(ok)
}

#[cgroup_sock_addr(connect4)]
pub fn admit_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn admit_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, true)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
