//! Reading (and emptying) a whole BPF hash map in a few system calls
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, Linux ≥ 5.6).
//!
//! aya iterates a map with two system calls per entry (next key, then
//! lookup) and a fresh allocation per per-CPU value; with a thousand
//! cgroups every tick that was most of the agent's CPU. A batch lookup
//! copies a few hundred entries per call into one reused buffer. aya has
//! no batch operations, hence this small wrapper of the system call.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per call; doubled when a hash bucket holds more.
const CHUNK: usize = 256;

/// Reusable buffers for [`for_each`].
#[derive(Debug, Default)]
pub struct Batch {
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Batch {
    /// Calls `f(key, value)` for every entry of the hash map `fd`, whose keys
    /// are `key_size` bytes and values `value_size` bytes (for a per-CPU map:
    /// the values of all `cpus` possible CPUs, each padded to 8 bytes, as
    /// the kernel lays them out). `Err` with `EINVAL`/`ENOTSUPP` means the
    /// kernel or map type has no batch lookup: fall back to iterating.
    pub fn for_each(
        &mut self,
        fd: BorrowedFd<'_>,
        key_size: usize,
        value_size: usize,
        drain: bool,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> io::Result<()> {
        let mut chunk = CHUNK;
        // A hash map's batch token is a bucket index (u32).
        let mut token_in = 0u64;
        let mut token_out = 0u64;
        let mut first = true;
        loop {
            // Grown, never shrunk: the maps read in turn have values of
            // different sizes, and zeroing the buffer again each time cost
            // more than the copy.
            for (buf, len) in [
                (&mut self.keys, chunk * key_size),
                (&mut self.values, chunk * value_size),
            ] {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
            }
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    std::ptr::from_mut(&mut token_in) as u64
                },
                out_batch: std::ptr::from_mut(&mut token_out) as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: u32::try_from(chunk).unwrap_or(u32::MAX),
                map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
                ..Default::default()
            };
            // SAFETY: `attr` is a valid `bpf_attr.batch` whose pointers name
            // buffers of `count` keys and values and two u64 tokens, all
            // alive and exclusively borrowed for the duration of the call;
            // the size passed is the struct's.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    if drain {
                        BPF_MAP_LOOKUP_AND_DELETE_BATCH
                    } else {
                        BPF_MAP_LOOKUP_BATCH
                    },
                    std::ptr::from_mut(&mut attr),
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let got = attr.count as usize;
            for i in 0..got.min(chunk) {
                f(
                    &self.keys[i * key_size..(i + 1) * key_size],
                    &self.values[i * value_size..(i + 1) * value_size],
                );
            }
            match err {
                None => {}
                // The end of the map (possibly with the last entries).
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                // One bucket holds more entries than fit: ask for more.
                Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                    chunk *= 2;
                    if chunk > 1 << 20 {
                        return Err(e);
                    }
                    continue;
                }
                Some(e) => return Err(e),
            }
            token_in = token_out;
            first = false;
        }
    }
}

/// The size of one CPU's copy of a per-CPU map value, as the kernel lays
/// them out in a batch (rounded up to 8 bytes).
pub fn per_cpu_stride(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_padded_to_eight_bytes() {
        assert_eq!(per_cpu_stride(8), 8);
        assert_eq!(per_cpu_stride(4), 8);
        assert_eq!(per_cpu_stride(704), 704);
        assert_eq!(per_cpu_stride(705), 712);
    }

    #[test]
    fn the_attribute_matches_the_kernel_layout() {
        // struct { u64 in_batch, out_batch, keys, values; u32 count, map_fd;
        // u64 elem_flags, flags; } in include/uapi/linux/bpf.h.
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, flags), 48);
    }
}
