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
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map, sk_lookup},
    maps::{HashMap, LpmTrie, PerCpuHashMap, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, SockAddrContext},
};
use governor_common::enforce::{
    Bucket, ExemptData, FLAG_REJECT_ALL, MODE_DROP, Verdicts, cgroup_scope, port_scope,
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

#[inline(always)]
fn count<K>(map: &PerCpuHashMap<K, Verdicts>, key: &K, verdict: u8) {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value.
        unsafe {
            match verdict {
                ADMITTED => (*v).admitted += 1,
                REFUSED => (*v).refused += 1,
                _ => (*v).dropped += 1,
            }
        }
    } else {
        let v = Verdicts {
            admitted: u64::from(verdict == ADMITTED),
            refused: u64::from(verdict == REFUSED),
            dropped: u64::from(verdict == DROPPED),
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
    let Some(b) = PORT_BUCKETS.get_ptr_mut(port) else {
        return SK_PASS;
    };
    if exempt(port_scope(port as u16), family, ip4, ip6) {
        count(&PORT_VERDICTS, &port, ADMITTED);
        return SK_PASS;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if admit(b, now) {
        count(&PORT_VERDICTS, &port, ADMITTED);
        return SK_PASS;
    }
    // SAFETY: as above.
    let sink = if family == AF_INET6 { 1 } else { 0 };
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
