//! The replay's HTML page in a real browser: headless Chromium (Debian's
//! `chromium`) renders the page of a known report, and its screenshot must
//! show the charts where the layout puts them: the signal, the watermarks
//! (as horizontal lines, high above low), the rung and the decision marks in
//! both columns (live, candidate), the cgroup's p50/p99 below the policies.
//! `--dump-dom` must hold one `<svg>` per chart. With
//! `GOVERNOR_HTML_REPORT_KEEP=DIR` the page and its screenshot are kept there.
//!
//! Nothing here needs the kernel; it runs as root (as every test of this
//! crate does), so Chromium runs with `--no-sandbox`, in a private profile
//! directory, killed (its process group, by the id it was started with) if
//! it outlives its timeout or the test panics.

use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use governor::record::{
    html::{colour, html},
    report::{CgroupSeries, Marker, Point, PolicyReport, Report, Run},
};

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 2000;
/// The two columns split here (the page's left margin is 24 px, a chart is
/// 660 px wide, the gap 12 px).
const SPLIT: u32 = 700;
const TIMEOUT: Duration = Duration::from_secs(90);

/// Chromium as `$CHROMIUM`, else `chromium` on `$PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(p.into());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// A started Chromium; its process group is killed when dropped unless it
/// has been waited for, so a panicking test leaves nothing running.
struct Browser {
    child: Child,
    done: bool,
}

impl Browser {
    fn kill_group(&mut self) {
        // The child leads its own process group (process_group(0)), whose
        // id is its pid: this reaches its zygote and renderers too.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.done {
            self.kill_group();
        }
    }
}

/// Runs headless Chromium on `page` with `extra` arguments; returns its
/// stdout. Panics (after killing it) past [`TIMEOUT`] or on failure.
fn run_chromium(bin: &Path, profile: &Path, page: &Path, extra: &[&str]) -> String {
    let stderr_path = profile.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("chromium's stderr file");
    let url = format!("file://{}", page.display());
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--force-device-scale-factor=1",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--no-pings",
            &format!("--window-size={WIDTH},{HEIGHT}"),
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(extra)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let mut browser = Browser { child, done: false };
    let mut stdout = browser.child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        match browser.child.try_wait().expect("wait for chromium") {
            Some(status) => break status,
            None if started.elapsed() > TIMEOUT => {
                browser.kill_group();
                panic!(
                    "chromium did not finish in {TIMEOUT:?}; its stderr: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    browser.done = true;
    // Whatever it left in its group (it normally reaps its helpers itself).
    if let Ok(pid) = i32::try_from(browser.child.id()) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let out = reader.join().expect("stdout reader");
    assert!(
        status.success(),
        "chromium failed ({status}) after {:?}; its stderr: {}",
        started.elapsed(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    println!("chromium {:?}: {:?}", extra, started.elapsed());
    out
}

fn marker(t: f64, kind: &str, direction: &str, from: usize, to: usize, text: &str) -> Marker {
    Marker {
        t,
        kind: kind.to_string(),
        direction: direction.to_string(),
        from_rung: from,
        to_rung: to,
        text: text.to_string(),
    }
}

/// A run over ten minutes of 1 s ticks: `value(t)` and the rung from
/// `steps` (`(since t, rung)`, in order).
fn run(value: impl Fn(f64) -> Option<f64>, steps: &[(f64, usize)], decisions: Vec<Marker>) -> Run {
    Run {
        points: (0..600)
            .map(|i| {
                let t = f64::from(i);
                Point {
                    t,
                    value: value(t),
                    rung: steps.iter().rev().find(|s| s.0 <= t).map_or(0, |s| s.1),
                }
            })
            .collect(),
        decisions,
    }
}

/// Two policies, one with a candidate; a trip and a recovery; a gap; one
/// watched cgroup.
fn known_report() -> Report {
    // runq p99: 0.5 ms, over 2 ms between 120 s and 240 s; no data 400–420 s.
    let api_signal = |t: f64| {
        if (400.0..420.0).contains(&t) {
            None
        } else if (120.0..240.0).contains(&t) {
            Some(0.003 + 0.0003 * (t / 7.0).sin())
        } else {
            Some(0.0005 + 0.0001 * (t / 5.0).sin())
        }
    };
    let api_live = run(
        api_signal,
        &[(130.0, 1), (150.0, 2), (260.0, 1), (300.0, 0)],
        vec![
            marker(
                130.0,
                "applied",
                "up",
                0,
                1,
                "runq_p99 3.1 ms >= high 2 ms for 10s",
            ),
            marker(
                150.0,
                "applied",
                "up",
                1,
                2,
                "still over high after settle 20s",
            ),
            marker(260.0, "applied", "down", 2, 1, "under low 1 ms for 20s"),
            marker(300.0, "applied", "down", 1, 0, "recovered"),
        ],
    );
    let api_candidate = run(
        api_signal,
        &[(140.0, 1), (280.0, 0)],
        vec![
            marker(
                140.0,
                "would",
                "up",
                0,
                1,
                "runq_p99 3.0 ms >= high 2 ms for 20s",
            ),
            marker(280.0, "would", "down", 1, 0, "under low 1 ms for 40s"),
        ],
    );
    let batch_live = run(
        |t| {
            Some(if (300.0..360.0).contains(&t) {
                0.9
            } else {
                0.3
            })
        },
        &[(310.0, 1), (380.0, 0)],
        vec![
            marker(310.0, "applied", "up", 0, 1, "cpu_pressure 90% >= high 80%"),
            marker(
                330.0,
                "refused",
                "up",
                1,
                1,
                "rung 2 names a protected target",
            ),
            marker(380.0, "applied", "down", 1, 0, "recovered"),
        ],
    );
    Report {
        title: "recording/ replayed with candidate.toml".to_string(),
        started_unix_ms: 1_764_650_000_000,
        from: 0.0,
        to: 599.0,
        policies: vec![
            PolicyReport {
                name: "api-latency".to_string(),
                signal: "runq_p99 of cgroup /workload/api".to_string(),
                unit: "s",
                high: 0.002,
                low: 0.001,
                live_watermarks: None,
                rungs: 2,
                live: Some(api_live),
                candidate: Some(api_candidate),
            },
            PolicyReport {
                name: "host-pressure".to_string(),
                signal: "cpu_pressure of the host".to_string(),
                unit: "ratio",
                high: 0.8,
                low: 0.5,
                live_watermarks: None,
                rungs: 2,
                live: Some(batch_live),
                candidate: None,
            },
        ],
        cgroups: vec![CgroupSeries {
            path: "/workload/api".to_string(),
            points: (0..600)
                .map(|i| {
                    let t = f64::from(i);
                    let busy = (120.0..240.0).contains(&t);
                    (t, 2e-5, if busy { 3e-3 } else { 6e-4 })
                })
                .collect(),
        }],
    }
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).expect("a #rrggbb colour");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// A decoded screenshot, RGB.
struct Shot {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Shot {
    fn load(path: &Path) -> Shot {
        let file = std::fs::File::open(path).expect("open the screenshot");
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
        let info = reader.next_frame(&mut buf).expect("the PNG's frame");
        let channels = info.color_type.samples();
        assert!(channels >= 3, "a colour screenshot ({:?})", info.color_type);
        let px = buf[..info.buffer_size()]
            .chunks_exact(channels)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Shot {
            w: info.width,
            h: info.height,
            px,
        }
    }

    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.w + x) * 3) as usize;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// The pixels of exactly this colour (±2 per channel), as (x, y).
    fn find(&self, c: [u8; 3]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for y in 0..self.h {
            for x in 0..self.w {
                let p = self.at(x, y);
                if p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 2) {
                    out.push((x, y));
                }
            }
        }
        out
    }

    /// Rows with at least `n` pixels of `c` in `[x0, x1)`: horizontal lines.
    fn rows_with(&self, c: [u8; 3], x0: u32, x1: u32, n: usize) -> Vec<u32> {
        let mut count = vec![0usize; self.h as usize];
        for (x, y) in self.find(c) {
            if (x0..x1).contains(&x) {
                count[y as usize] += 1;
            }
        }
        (0..self.h).filter(|y| count[*y as usize] >= n).collect()
    }

    /// Variance of the luminance, and the share of pixels that are not white.
    fn spread(&self) -> (f64, f64) {
        let lum: Vec<f64> = self
            .px
            .chunks_exact(3)
            .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
            .collect();
        let n = lum.len() as f64;
        let mean = lum.iter().sum::<f64>() / n;
        let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
        let inked = lum.iter().filter(|l| **l < 250.0).count() as f64 / n;
        (var, inked)
    }
}

#[test]
fn chromium_shows_the_charts_of_the_report() {
    let Some(bin) = chromium() else {
        governor_integration::skip(
            "chromium is not installed (Debian: apt-get install --no-install-recommends chromium; `cargo xtask setup` does)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("report.html");
    let text = html(&known_report());
    std::fs::write(&page, &text).expect("write the page");
    println!("page: {} bytes", text.len());

    // The DOM: one <svg> per chart: api live + candidate, host-pressure
    // live (and a note where its candidate would be), the cgroup.
    let dom = run_chromium(
        &bin,
        &dir.path().join("profile-dom"),
        &page,
        &["--dump-dom"],
    );
    let svgs = dom.matches("<svg").count();
    let charts = dom.matches("<svg class=\"chart\"").count();
    let marks = dom.matches("<g class=\"mark\">").count();
    println!(
        "dom: {} bytes, {svgs} <svg>, {charts} charts, {marks} decision marks",
        dom.len()
    );
    assert_eq!(svgs, 4, "svg elements in the rendered DOM");
    assert_eq!(charts, 4);
    assert_eq!(marks, 4 + 2 + 3, "one mark per decision here");
    assert!(dom.contains("the candidate config has no such policy"));
    assert!(
        dom.contains("rung 2 names a protected target"),
        "reasons are in the tooltips"
    );

    // The screenshot.
    let png_path = dir.path().join("shot.png");
    let shot_arg = format!("--screenshot={}", png_path.display());
    run_chromium(&bin, &dir.path().join("profile-shot"), &page, &[&shot_arg]);
    if let Some(keep) = std::env::var_os("GOVERNOR_HTML_REPORT_KEEP") {
        // For a look by eye (and the README's picture).
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("create $GOVERNOR_HTML_REPORT_KEEP");
        std::fs::copy(&page, keep.join("report.html")).expect("keep the page");
        std::fs::copy(&png_path, keep.join("report.png")).expect("keep the screenshot");
        println!("kept report.html and report.png in {}", keep.display());
    }
    let shot = Shot::load(&png_path);
    println!(
        "screenshot: {}x{}, {} bytes",
        shot.w,
        shot.h,
        std::fs::metadata(&png_path).map(|m| m.len()).unwrap_or(0)
    );
    assert_eq!((shot.w, shot.h), (WIDTH, HEIGHT));
    let (var, inked) = shot.spread();
    println!(
        "luminance variance {var:.0}, {:.1}% of pixels not white",
        inked * 100.0
    );
    assert!(var > 100.0 && inked > 0.02, "the page is not blank");

    let halves = |c: &str| {
        let px = shot.find(rgb(c));
        let left: Vec<_> = px.iter().copied().filter(|p| p.0 < SPLIT).collect();
        let right: Vec<_> = px.iter().copied().filter(|p| p.0 >= SPLIT).collect();
        println!("{c}: {} px left, {} px right", left.len(), right.len());
        (left, right)
    };
    let max_y = |px: &[(u32, u32)]| px.iter().map(|p| p.1).max().unwrap_or(0);
    let min_y = |px: &[(u32, u32)]| px.iter().map(|p| p.1).min().unwrap_or(u32::MAX);

    // Signal, watermarks and rung in both columns.
    let (sig_l, sig_r) = halves(colour::SIGNAL);
    let (high_l, high_r) = halves(colour::HIGH);
    let (low_l, low_r) = halves(colour::LOW);
    let (rung_l, rung_r) = halves(colour::RUNG);
    for (name, l, r) in [
        ("signal", &sig_l, &sig_r),
        ("high", &high_l, &high_r),
        ("low", &low_l, &low_r),
        ("rung", &rung_l, &rung_r),
    ] {
        assert!(l.len() >= 300, "{name}: {} px in the live column", l.len());
        assert!(
            r.len() >= 300,
            "{name}: {} px in the candidate column",
            r.len()
        );
    }
    // Only the first policy has a candidate: its column ends higher up.
    assert!(
        max_y(&sig_r) + 200 < max_y(&sig_l),
        "the candidate column has one chart, the live column two (signal rows {} vs {})",
        max_y(&sig_r),
        max_y(&sig_l)
    );
    // Watermarks are horizontal lines (dashed: 10 of every 14 px over the
    // plot), high above low in each chart.
    let high_rows = shot.rows_with(rgb(colour::HIGH), 0, SPLIT, 250);
    let low_rows = shot.rows_with(rgb(colour::LOW), 0, SPLIT, 250);
    println!("watermark rows, live column: high {high_rows:?}, low {low_rows:?}");
    assert!(high_rows.len() >= 2 && low_rows.len() >= 2);
    assert!(high_rows[0] < low_rows[0], "high is drawn above low");
    assert!(
        !shot
            .rows_with(rgb(colour::HIGH), SPLIT, WIDTH, 250)
            .is_empty()
    );

    // Decision marks: applied (filled) live, would (hollow) in the candidate.
    let (applied_l, _) = halves(colour::APPLIED);
    let (_, would_r) = halves(colour::WOULD);
    let (refused_l, _) = halves(colour::REFUSED);
    assert!(
        applied_l.len() >= 40,
        "applied marks: {} px",
        applied_l.len()
    );
    assert!(would_r.len() >= 10, "would marks: {} px", would_r.len());
    assert!(
        refused_l.len() >= 10,
        "refused mark: {} px",
        refused_l.len()
    );

    // The cgroup's p50/p99 chart: in the left column, below the policies.
    let (p50_l, p50_r) = halves(colour::P50);
    let (p99_l, p99_r) = halves(colour::P99);
    assert!(p50_l.len() >= 300 && p99_l.len() >= 300);
    assert!(
        p50_r.is_empty() && p99_r.is_empty(),
        "one cgroup chart, on the left"
    );
    assert!(
        min_y(&p50_l) > max_y(&sig_l),
        "the cgroup chart (from row {}) comes after the policies' (to row {})",
        min_y(&p50_l),
        max_y(&sig_l)
    );
    // p99 over p50: its line is higher on the page, on average.
    let mean_y =
        |px: &[(u32, u32)]| px.iter().map(|p| f64::from(p.1)).sum::<f64>() / px.len() as f64;
    assert!(mean_y(&p99_l) < mean_y(&p50_l), "p99 is drawn above p50");
}
