//! A newc ("new ASCII") cpio archive, the format the kernel unpacks as its
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 eight-digit hex
//! fields), the NUL-terminated name, padding to 4 bytes, the data, padding
//! to 4 bytes; a `TRAILER!!!` entry ends the archive. Parent directories are
//! added on demand, so callers name only what they put in.

use std::{
    collections::BTreeSet,
    io::{self, Write},
};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;

/// Writes a newc archive to `W`.
pub struct Newc<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Newc<W> {
    /// An empty archive.
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory (and its parents), mode 0755.
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    /// A regular file with `mode` permission bits (its parents are created).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = self.parents(path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A character device node, e.g. `/dev/console` (5, 1).
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = self.parents(path)?;
        self.entry(&path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = self.parents(path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<String> {
        let path = path.trim_matches('/').to_owned();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(path)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name}: larger than newc's 4 GiB")))?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino += 1;
            self.next_ino
        };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check (only for the 070702 format)
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one entry.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads back every entry, checking the layout.
    fn parse(mut a: &[u8]) -> Vec<Entry> {
        let total = a.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - a.len()) % 4, 0, "entries start 4-aligned");
            assert_eq!(&a[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).expect("ascii");
                u32::from_str_radix(s, 16).expect("hex")
            };
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name = String::from_utf8(a[110..110 + namesize - 1].to_vec()).expect("utf-8");
            assert_eq!(a[110 + namesize - 1], 0, "name is NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = a[data_at..data_at + size].to_vec();
            a = &a[(data_at + size).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn files_dirs_and_nodes_round_trip() {
        let mut n = Newc::new(Vec::new());
        n.file("/init", 0o755, b"#!").expect("write");
        n.char_dev("/dev/console", 0o600, 5, 1).expect("write");
        n.file("/work/x/target/debug/govtest-load", 0o755, b"12345")
            .expect("write");
        n.dir("/work/x").expect("write");
        n.symlink("/sbin/ip", "/init").expect("write");
        let entries = parse(&n.finish().expect("finish"));
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "dev",
                "dev/console",
                "work",
                "work/x",
                "work/x/target",
                "work/x/target/debug",
                "work/x/target/debug/govtest-load",
                "sbin",
                "sbin/ip",
            ]
        );
        assert_eq!(entries[0].1, 0o100_755);
        assert_eq!(entries[0].3, b"#!");
        assert_eq!((entries[2].1, entries[2].2), (0o020_600, (5, 1)));
        assert_eq!(entries[1].1, 0o040_755);
        assert_eq!(entries[7].3, b"12345");
        assert_eq!(
            (entries[9].1, entries[9].3.as_slice()),
            (0o120_777, &b"/init"[..])
        );
    }
}
