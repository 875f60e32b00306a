//! Recording segments on disk: gzip-compressed frames
//! ([`governor_engine::record`]), one file per hour of a run at most, named
//! by the Unix time of their first frame (`rec-<ms>.gvr.gz`, so that the
//! names sort in time), bounded by age (`record_keep`) and total size
//! (`record_max`), oldest dropped first.
//!
//! Frames reach the writer thread through a bounded channel: a tick never
//! waits for the disk. The stream is flushed (a gzip sync flush) once a
//! second, so a crash loses at most the last second; a torn end is read
//! back as such, not as an error.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use flate2::{Compression, read::MultiGzDecoder, write::GzEncoder};
use governor_engine::record::{self, Frame, Input};

/// Frames waiting for the writer at most; past it frames are dropped (and
/// counted) rather than stalling the tick.
const QUEUE: usize = 4096;

/// A segment is closed and a new one begun after this long.
pub const SEGMENT_SPAN: Duration = Duration::from_secs(3600);

/// What the writer reads the time from: a monotonic reading (segments are
/// rotated by it) and the Unix time in milliseconds (segments are named,
/// and aged, by it).
pub type Clock = Arc<dyn Fn() -> (Duration, u64) + Send + Sync>;

/// When the writer begins a new segment, and the clock it judges by.
#[derive(Clone)]
pub struct Rotation {
    /// A segment is closed and a new one begun after this long.
    pub span: Duration,
    /// The time.
    pub clock: Clock,
}

impl Default for Rotation {
    /// Every [`SEGMENT_SPAN`], by the system's clocks.
    fn default() -> Self {
        let origin = Instant::now();
        Self {
            span: SEGMENT_SPAN,
            clock: Arc::new(move || (origin.elapsed(), unix_ms(SystemTime::now()))),
        }
    }
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("span", &self.span)
            .finish()
    }
}

/// The segments' gzip level. In the footprint bench (1,100 watched
/// targets, 100 ms tick) level 6 spends about 0.3% of a core in the writer,
/// most of it in deflate, for 4.9 kB a tick; level 1 cut deflate's share by
/// about 3.5x but wrote 6.5 kB a tick.
const COMPRESSION: Compression = Compression::new(6);

/// How often the stream is flushed to the file.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Where and how much to record.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The directory of the segments.
    pub dir: PathBuf,
    /// Segments older than this are deleted.
    pub keep: Duration,
    /// The segments take at most this many bytes together.
    pub max_bytes: u64,
}

/// What the writer has done, for metrics and `status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames written.
    pub frames: AtomicU64,
    /// Uncompressed bytes written.
    pub bytes_in: AtomicU64,
    /// Compressed bytes written (flushed).
    pub bytes_out: AtomicU64,
    /// Frames dropped: the writer fell behind, or writing failed.
    pub dropped: AtomicU64,
    /// Segments deleted by the limits.
    pub deleted: AtomicU64,
}

/// The agent's end of a recording: frames are handed to a writer thread.
pub struct Recorder {
    tx: Option<mpsc::SyncSender<Frame>>,
    counters: Arc<Counters>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Recorder {
    /// Starts recording into `limits.dir` (created 0700 if absent; refused
    /// if it is writable by group or others, or not owned by us, like the
    /// journal's directory).
    pub fn start(limits: Limits) -> anyhow::Result<Self> {
        Self::start_with(limits, Rotation::default())
    }

    /// [`Recorder::start`], rotating segments as `rotation` says.
    pub fn start_with(limits: Limits, rotation: Rotation) -> anyhow::Result<Self> {
        prepare_dir(&limits.dir)?;
        let (tx, rx) = mpsc::sync_channel::<Frame>(QUEUE);
        let counters = Arc::new(Counters::default());
        let c2 = Arc::clone(&counters);
        let thread = thread::Builder::new()
            .name("record".into())
            .spawn(move || writer(&limits, &rotation, rx, &c2))?;
        Ok(Self {
            tx: Some(tx),
            counters,
            thread: Some(thread),
        })
    }

    /// Hands one frame to the writer; drops it (counted) if the writer is
    /// behind.
    pub fn record(&self, frame: Frame) {
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.try_send(frame).is_ok());
        if !sent {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What was written so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Writes what is queued, closes the segment and waits for the writer.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.is_dir() {
                bail!("record_dir {} is not a directory", dir.display());
            }
            // SAFETY: no preconditions.
            let me = unsafe { libc::geteuid() };
            if m.uid() != me || m.permissions().mode() & 0o022 != 0 {
                bail!(
                    "record_dir {} must be owned by uid {me} and not writable by group or others \
                     (it is uid {}, mode {:o})",
                    dir.display(),
                    m.uid(),
                    m.permissions().mode() & 0o7777
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating record_dir {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("record_dir {}", dir.display())),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The segment files of `dir`, oldest first, with their start (Unix ms)
/// and size.
pub fn segments_in(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64, u64)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let Some(ms) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rec-"))
            .and_then(|n| n.strip_suffix(".gvr.gz"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((e.path(), ms, e.metadata().map_or(0, |m| m.len())));
    }
    out.sort();
    Ok(out)
}

/// Deletes the oldest segments (never `current`) until every one left is
/// younger than `keep` and they take at most `max_bytes` together. A
/// segment's frames end where the next begins, at most `span` after its
/// start: its age is judged by its start plus `span`.
fn enforce(
    limits: &Limits,
    span: Duration,
    current: Option<&Path>,
    now_ms: u64,
    counters: &Counters,
) {
    let Ok(mut segs) = segments_in(&limits.dir) else {
        return;
    };
    let keep_ms = u64::try_from(limits.keep.as_millis()).unwrap_or(u64::MAX);
    let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    let mut total: u64 = segs.iter().map(|s| s.2).sum();
    segs.retain(|s| Some(s.0.as_path()) != current);
    for (path, start, size) in segs {
        let old = now_ms.saturating_sub(start) > keep_ms.saturating_add(span_ms);
        if !old && total <= limits.max_bytes {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(size);
            counters.deleted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Open {
    path: PathBuf,
    gz: GzEncoder<File>,
    /// The clock's monotonic reading when it was opened.
    opened: Duration,
    flushed: Instant,
}

/// Opens a new segment named by `start_ms` (or the next free millisecond:
/// a segment is never appended to nor overwritten).
fn open_segment(dir: &Path, start_ms: u64, opened: Duration) -> std::io::Result<Open> {
    let mut ms = start_ms;
    let (path, file) = loop {
        let path = dir.join(format!("rec-{ms:013}.gvr.gz"));
        match fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => break (path, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && ms < start_ms + 1000 => {
                ms += 1;
            }
            Err(e) => return Err(e),
        }
    };
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    let mut gz = GzEncoder::new(file, COMPRESSION);
    gz.write_all(&record::header())?;
    Ok(Open {
        path,
        gz,
        opened,
        flushed: Instant::now(),
    })
}

/// The config in force, to begin each later segment with.
fn segment_frame(last: &Input, now: Duration) -> Option<Frame> {
    let (config, source_name, seed, agent_cgroup, started_unix_ms, dry_run) = match last {
        Input::Start {
            config,
            source_name,
            seed,
            agent_cgroup,
            started_unix_ms,
            dry_run,
        }
        | Input::Segment {
            config,
            source_name,
            seed,
            agent_cgroup,
            started_unix_ms,
            dry_run,
            ..
        } => (
            config,
            source_name,
            *seed,
            agent_cgroup,
            *started_unix_ms,
            *dry_run,
        ),
        _ => return None,
    };
    Some(Frame {
        input: Input::Segment {
            config: config.clone(),
            source_name: source_name.clone(),
            seed,
            agent_cgroup: agent_cgroup.clone(),
            started_unix_ms,
            now,
            dry_run,
        },
        decisions: Vec::new(),
    })
}

fn writer(limits: &Limits, rotation: &Rotation, rx: mpsc::Receiver<Frame>, counters: &Counters) {
    let mut open: Option<Open> = None;
    // The last Start (with reloads folded in): each new segment begins
    // with it.
    let mut in_force: Option<Input> = None;
    let mut line = Vec::with_capacity(4096);
    let mut failed_once = false;
    loop {
        let frame = match rx.recv_timeout(FLUSH_EVERY) {
            Ok(f) => Some(f),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(frame) = frame {
            match &frame.input {
                Input::Start { .. } => {
                    // A run's start begins a segment of its own.
                    if let Some(o) = open.take() {
                        finish(o, counters);
                    }
                    in_force = Some(frame.input.clone());
                }
                Input::Reload {
                    config,
                    source_name,
                    ..
                } => {
                    if let Some(
                        Input::Start {
                            config: c,
                            source_name: n,
                            ..
                        }
                        | Input::Segment {
                            config: c,
                            source_name: n,
                            ..
                        },
                    ) = in_force.as_mut()
                    {
                        c.clone_from(config);
                        n.clone_from(source_name);
                    }
                }
                _ => {}
            }
            let (mono, now_ms) = (rotation.clock)();
            let rotate = open
                .as_ref()
                .is_some_and(|o| mono.saturating_sub(o.opened) >= rotation.span);
            if rotate && let Some(o) = open.take() {
                finish(o, counters);
            }
            if open.is_none() {
                match open_segment(&limits.dir, now_ms, mono) {
                    Ok(mut o) => {
                        // A later segment of a run begins with its config.
                        if !matches!(frame.input, Input::Start { .. })
                            && let Some(f) = in_force
                                .as_ref()
                                .and_then(|i| segment_frame(i, frame.input.now()))
                        {
                            line.clear();
                            record::encode(&f, &mut line);
                            let _ = o.gz.write_all(&line);
                        }
                        open = Some(o);
                        enforce(
                            limits,
                            rotation.span,
                            open.as_ref().map(|o| o.path.as_path()),
                            now_ms,
                            counters,
                        );
                    }
                    Err(e) => {
                        if !failed_once {
                            tracing::warn!(
                                "recording stopped: cannot create a segment in {}: {e}",
                                limits.dir.display()
                            );
                            failed_once = true;
                        }
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            line.clear();
            record::encode(&frame, &mut line);
            if let Some(o) = open.as_mut() {
                if let Err(e) = o.gz.write_all(&line) {
                    tracing::warn!("recording: writing {}: {e}", o.path.display());
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    open = None;
                    continue;
                }
                counters.frames.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_in
                    .fetch_add(line.len() as u64, Ordering::Relaxed);
            }
        }
        if let Some(o) = open.as_mut()
            && o.flushed.elapsed() >= FLUSH_EVERY
        {
            let _ = o.gz.flush();
            o.flushed = Instant::now();
            counters.bytes_out.store(
                o.gz.get_ref().metadata().map_or(0, |m| m.len()),
                Ordering::Relaxed,
            );
        }
    }
    if let Some(o) = open.take() {
        finish(o, counters);
    }
}

fn finish(o: Open, counters: &Counters) {
    match o.gz.finish() {
        Ok(f) => {
            let _ = f.sync_all();
            counters
                .bytes_out
                .store(f.metadata().map_or(0, |m| m.len()), Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("recording: closing {}: {e}", o.path.display()),
    }
}

/// What was read back.
#[derive(Debug, Default)]
pub struct Recording {
    /// Every frame, in order, across the files read.
    pub frames: Vec<Frame>,
    /// Files read, and for each whether it ended torn (a crash, or a
    /// segment still being written).
    pub files: Vec<(PathBuf, bool)>,
}

/// The segment files `paths` name (files, or directories of them), in order.
pub fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let segs = segments_in(p)?;
            if segs.is_empty() {
                bail!("{} holds no recording (rec-*.gvr.gz)", p.display());
            }
            files.extend(segs.into_iter().map(|s| s.0));
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Reads `paths` (segment files, or directories of them) in order.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Recording> {
    let mut frames = Vec::new();
    let files = each(paths, |f| {
        frames.push(f);
        Ok(true)
    })?;
    Ok(Recording { frames, files })
}

/// Hands every frame of `paths` to `f` in order, one segment in memory at
/// a time, until `f` says stop (`Ok(false)`); returns the files read and
/// whether each ended torn.
pub fn each(
    paths: &[PathBuf],
    mut f: impl FnMut(Frame) -> anyhow::Result<bool>,
) -> anyhow::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    for path in files(paths)? {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        bytes.clear();
        // A segment cut short (a crash, or one being written) ends mid-
        // stream: what was read before is kept.
        let cut = match MultiGzDecoder::new(file).read_to_end(&mut bytes) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => true,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut result = Ok(true);
        let torn = record::decode_each(&bytes, |frame| {
            if matches!(result, Ok(true)) {
                result = f(frame);
            }
        })
        .with_context(|| format!("reading {}", path.display()))?;
        out.push((path, cut || torn));
        if !result? {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::record::fixture::{LIVE, T0};
    use governor_engine::snapshot::Snapshot;

    fn step(ms: u64) -> Frame {
        Frame {
            input: Input::Step {
                now: Duration::from_millis(ms),
                snapshot: Snapshot {
                    ts_ms: ms,
                    interval_ms: 100,
                    ..Default::default()
                },
            },
            decisions: Vec::new(),
        }
    }

    fn start() -> Frame {
        Frame {
            input: Input::Start {
                config: "# empty\n".into(),
                source_name: "t".into(),
                seed: 1,
                agent_cgroup: None,
                started_unix_ms: 5,
                dry_run: false,
            },
            decisions: Vec::new(),
        }
    }

    #[test]
    fn frames_written_are_read_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("rec");
        let r = Recorder::start(Limits {
            dir: dir.clone(),
            keep: Duration::from_secs(3600),
            max_bytes: 1 << 20,
        })
        .unwrap();
        let mut frames = vec![start()];
        frames.extend((1..=500).map(|i| step(i * 100)));
        for f in &frames {
            r.record(f.clone());
        }
        r.finish();
        let back = read(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(back.frames, frames);
        assert_eq!(back.files.len(), 1);
        assert!(!back.files[0].1, "closed cleanly");
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_segment_cut_short_is_read_up_to_the_cut() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let mut o = open_segment(&dir, 1, Duration::ZERO).unwrap();
        let mut line = Vec::new();
        for f in [start(), step(100), step(200)] {
            record::encode(&f, &mut line);
        }
        o.gz.write_all(&line).unwrap();
        o.gz.flush().unwrap();
        // The process dies: no gzip trailer, and half a frame.
        o.gz.write_all(&[200, 0, 0, 0, 2, 1]).unwrap();
        o.gz.flush().unwrap();
        std::mem::forget(o.gz);
        let back = read(&[dir]).unwrap();
        assert_eq!(back.frames, vec![start(), step(100), step(200)]);
        assert!(back.files[0].1, "reported torn");
    }

    #[test]
    fn the_oldest_segments_go_first_past_the_size_limit() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        for ms in [1_000u64, 2_000, 3_000, 4_000] {
            fs::write(dir.join(format!("rec-{ms:013}.gvr.gz")), vec![0u8; 100]).unwrap();
        }
        fs::write(dir.join("notes.txt"), "kept").unwrap();
        let limits = Limits {
            dir: dir.clone(),
            keep: Duration::from_secs(3600),
            max_bytes: 250,
        };
        let counters = Counters::default();
        let current = dir.join(format!("rec-{:013}.gvr.gz", 4_000));
        enforce(&limits, SEGMENT_SPAN, Some(&current), 5_000, &counters);
        let left: Vec<u64> = segments_in(&dir).unwrap().iter().map(|s| s.1).collect();
        assert_eq!(left, [3_000, 4_000]);
        assert_eq!(counters.deleted.load(Ordering::Relaxed), 2);
        assert!(dir.join("notes.txt").exists(), "only segments are deleted");
        // By age: everything older than keep + one span, never the current.
        let limits = Limits {
            keep: Duration::from_secs(1),
            max_bytes: u64::MAX,
            ..limits
        };
        enforce(&limits, SEGMENT_SPAN, Some(&current), 10_000_000, &counters);
        let left: Vec<u64> = segments_in(&dir).unwrap().iter().map(|s| s.1).collect();
        assert_eq!(left, [4_000]);
    }

    /// A run of 40 s as the engine decided it: overloaded in 0–8 s and
    /// 20–28 s, reloaded (high 3 ms) at 15 s; one frame per 100 ms.
    fn run() -> (Vec<Frame>, String) {
        let reloaded = LIVE.replace("high = \"2ms\"", "high = \"3ms\"");
        let overloaded = |tick| tick < 80 || (200..280).contains(&tick);
        let frames = crate::record::fixture::run(
            400,
            |tick| if overloaded(tick) { 5000 } else { 100 },
            &[(150, reloaded.as_str())],
        );
        (frames, reloaded)
    }

    /// A clock the test moves: the monotonic reading is `ms`, the Unix
    /// time `T0 + ms`.
    fn test_clock() -> (Arc<AtomicU64>, Rotation) {
        let ms = Arc::new(AtomicU64::new(0));
        let m2 = Arc::clone(&ms);
        let clock: Clock = Arc::new(move || {
            let v = m2.load(Ordering::SeqCst);
            (Duration::from_millis(v), T0 + v)
        });
        (
            ms,
            Rotation {
                span: Duration::from_secs(5),
                clock,
            },
        )
    }

    /// Records `frames` through a writer rotating every 5 s of a clock
    /// that moves on by each frame's own time; returns the segment names
    /// seen on the way (every one created, even if deleted later) and the
    /// counters.
    fn record_all(frames: &[Frame], limits: &Limits) -> (Vec<u64>, Arc<Counters>) {
        let (ms, rotation) = test_clock();
        let r = Recorder::start_with(limits.clone(), rotation).unwrap();
        let counters = Arc::clone(&r.counters);
        let mut seen = std::collections::BTreeSet::new();
        for (n, f) in frames.iter().enumerate() {
            ms.store(
                u64::try_from(f.input.now().as_millis()).unwrap(),
                Ordering::SeqCst,
            );
            r.record(f.clone());
            // The writer reads the clock as it takes the frame: wait for
            // it before moving the clock on.
            let deadline = Instant::now() + Duration::from_secs(10);
            while counters.frames.load(Ordering::SeqCst) < n as u64 + 1 {
                assert!(Instant::now() < deadline, "the writer took no frame {n}");
                thread::sleep(Duration::from_micros(200));
            }
            seen.extend(segments_in(&limits.dir).unwrap().iter().map(|s| s.1));
        }
        r.finish();
        assert_eq!(counters.dropped.load(Ordering::SeqCst), 0);
        (seen.into_iter().collect(), counters)
    }

    fn limits(dir: &Path, keep: Duration, max_bytes: u64) -> Limits {
        Limits {
            dir: dir.to_path_buf(),
            keep,
            max_bytes,
        }
    }

    fn left(dir: &Path) -> Vec<u64> {
        segments_in(dir).unwrap().iter().map(|s| s.1).collect()
    }

    #[test]
    fn rotated_segments_each_begin_with_the_header_and_the_config_in_force() {
        let (frames, reloaded) = run();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("rec");
        let (seen, _) = record_all(
            &frames,
            &limits(&dir, Duration::from_secs(86_400), u64::MAX),
        );
        // 40 s in segments of 5 s.
        let segs = segments_in(&dir).unwrap();
        assert_eq!(segs.len(), 9, "{segs:?}");
        assert_eq!(left(&dir), seen, "nothing deleted");
        let starts: Vec<u64> = segs.iter().map(|s| s.1 - T0).collect();
        assert_eq!(
            starts,
            [
                0, 5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 35_000, 40_000
            ]
        );
        let mut body = Vec::new();
        for (i, (path, start, _)) in segs.iter().enumerate() {
            let mut bytes = Vec::new();
            MultiGzDecoder::new(File::open(path).unwrap())
                .read_to_end(&mut bytes)
                .unwrap();
            assert!(bytes.starts_with(&record::header()), "{}", path.display());
            let (fs_, torn) = record::decode(&bytes).unwrap();
            assert!(!torn);
            if i == 0 {
                assert!(matches!(fs_[0].input, Input::Start { .. }));
                body.extend(fs_);
                continue;
            }
            let Input::Segment {
                config,
                seed,
                started_unix_ms,
                now,
                ..
            } = &fs_[0].input
            else {
                panic!("segment {i} begins with {:?}", fs_[0].input);
            };
            // The reload at 15 s opens a segment: folded into its head.
            let expect = if start - T0 >= 15_000 {
                &reloaded
            } else {
                LIVE
            };
            assert_eq!(config, expect, "segment {i}");
            assert_eq!((*seed, *started_unix_ms), (3, T0));
            assert_eq!(*now, fs_[1].input.now());
            assert!(fs_[0].decisions.is_empty());
            body.extend(fs_.into_iter().skip(1));
        }
        assert_eq!(body, frames, "every frame once, in order");

        // Replayed from the directory, across the boundaries.
        let mut replayer = super::super::replay::Replayer::new(Default::default());
        let files = each(std::slice::from_ref(&dir), |f| replayer.feed(&f)).unwrap();
        assert_eq!(files.len(), 9);
        let r = replayer.finish();
        let recorded: usize = frames.iter().map(|f| f.decisions.len()).sum();
        assert!(recorded >= 6, "trips and recoveries in both overloads");
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert_eq!(r.live.len(), recorded);
        assert_eq!(r.live, r.replayed);
        assert_eq!(r.ticks, 400);
        assert_eq!(r.runs, 1);
        assert!(
            r.live.iter().any(|d| d.unix_ms >= T0 + 20_000),
            "decisions after the reload and several boundaries"
        );

        // From a later segment alone (its predecessors dropped): it starts
        // fresh from the config in force there.
        let late: Vec<PathBuf> = segs[4..].iter().map(|s| s.0.clone()).collect();
        let mut replayer = super::super::replay::Replayer::new(Default::default());
        each(&late, |f| replayer.feed(&f)).unwrap();
        let r = replayer.finish();
        assert!(r.began_mid_run);
        assert_eq!(r.ticks, 200);
        assert!(r.replayed.iter().any(|d| d.decision.text.contains("api")));
    }

    #[test]
    fn past_the_size_limit_the_oldest_segments_go_first_never_the_one_written() {
        let (frames, _) = run();
        let d = tempfile::tempdir().unwrap();
        // Unbounded first, to learn the segments' sizes.
        let free = d.path().join("free");
        record_all(
            &frames,
            &limits(&free, Duration::from_secs(86_400), u64::MAX),
        );
        let largest = segments_in(&free)
            .unwrap()
            .iter()
            .map(|s| s.2)
            .max()
            .unwrap();

        let dir = d.path().join("bounded");
        let max = 2 * largest + 1;
        let (seen, counters) = record_all(&frames, &limits(&dir, Duration::from_secs(86_400), max));
        assert_eq!(seen.len(), 9);
        let kept = left(&dir);
        assert!(
            kept.len() >= 3 && kept.len() < seen.len(),
            "{kept:?} of {seen:?}"
        );
        assert_eq!(kept, seen[seen.len() - kept.len()..], "the newest are kept");
        assert_eq!(
            counters.deleted.load(Ordering::SeqCst) as usize,
            seen.len() - kept.len()
        );
        // As the last segment began, the others fitted.
        let segs = segments_in(&dir).unwrap();
        let before_last: u64 = segs[..segs.len() - 1].iter().map(|s| s.2).sum();
        assert!(before_last <= max, "{before_last} > {max}");

        // No room at all: only the segment being written is left, whole.
        let none = d.path().join("none");
        let (seen, _) = record_all(&frames, &limits(&none, Duration::from_secs(86_400), 0));
        assert_eq!(left(&none), [*seen.last().unwrap()]);
        let back = read(&[none]).unwrap();
        assert!(matches!(back.frames[0].input, Input::Segment { .. }));
        assert_eq!(back.frames.last(), frames.last());
        assert!(!back.files[0].1);
    }

    #[test]
    fn past_the_age_limit_the_oldest_segments_go_first_never_the_one_written() {
        let (frames, _) = run();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("rec");
        // Kept 10 s (plus a span of 5 s, as a segment's frames end up to a
        // span after its start).
        let (seen, counters) =
            record_all(&frames, &limits(&dir, Duration::from_secs(10), u64::MAX));
        assert_eq!(seen.len(), 9);
        // At the last rotation (40 s) those that began before 25 s go.
        let kept: Vec<u64> = left(&dir).iter().map(|ms| ms - T0).collect();
        assert_eq!(kept, [25_000, 30_000, 35_000, 40_000]);
        assert_eq!(counters.deleted.load(Ordering::SeqCst), 5);

        // Kept no time at all: every closed one goes, not the current.
        let zero = d.path().join("zero");
        let (seen, _) = record_all(&frames, &limits(&zero, Duration::ZERO, u64::MAX));
        // A segment whose start is within one span of now is not older
        // than keep + span: the one before the current stays.
        assert_eq!(left(&zero), seen[seen.len() - 2..]);
    }

    #[test]
    fn a_group_writable_record_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o770)).unwrap();
        let err = prepare_dir(d.path()).unwrap_err().to_string();
        assert!(err.contains("not writable by group or others"), "{err}");
    }
}
