//! Per-scenario reports under `target/simulation/`: a CSV of every tick and
//! an SVG plot of the signal, the watermarks and the rung over time.

use std::{fmt::Write as _, fs, path::PathBuf};

use super::{TICK, Trace};

/// `target/simulation/`, found from the test's own temporary directory.
pub fn dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = tmp.parent().map(PathBuf::from).unwrap_or(tmp);
    target.join("simulation")
}

/// Writes `<name>.csv` and `<name>.svg`; returns their paths.
pub fn write(trace: &Trace) -> (PathBuf, PathBuf) {
    let dir = dir();
    fs::create_dir_all(&dir).expect("create target/simulation");
    let csv_path = dir.join(format!("{}.csv", trace.name));
    let svg_path = dir.join(format!("{}.svg", trace.name));
    fs::write(&csv_path, csv(trace)).expect("write the CSV report");
    fs::write(&svg_path, svg(trace)).expect("write the SVG report");
    (csv_path, svg_path)
}

fn csv(trace: &Trace) -> String {
    let mut out = String::from("t_s,offered_per_s,signal,high,low,rung,in_force,decisions\n");
    let mut decisions = trace.decisions.iter().peekable();
    for r in &trace.rows {
        let mut here = Vec::new();
        while let Some(d) = decisions.next_if(|d| super::tick_of(d.at) == r.tick) {
            here.push(d.to_string().replace('"', "'"));
        }
        let signal = r.signal.map_or(String::new(), |v| format!("{v:.3}"));
        let _ = writeln!(
            out,
            "{:.1},{:.0},{signal},{},{},{},{},\"{}\"",
            r.tick as f64 * TICK.as_secs_f64(),
            r.offered,
            trace.high,
            trace.low,
            r.rung,
            r.in_force,
            here.join(" | ")
        );
    }
    out
}

/// A small hand-made SVG: signal (clipped at 3× high) and watermarks on the
/// left axis, the rung as a step line on the right axis, gaps where there
/// was no data.
fn svg(trace: &Trace) -> String {
    let (w, h, pad, right) = (1000.0, 420.0, 50.0, 90.0);
    let n = trace.rows.len().max(2) as f64;
    let y_max = trace.high * 3.0;
    let rung_max = trace.rows.iter().map(|r| r.rung).max().unwrap_or(0).max(2) as f64;
    let x = |tick: u64| pad + (tick as f64) / (n - 1.0) * (w - pad - right);
    let y = |v: f64| h - pad - (v.min(y_max) / y_max) * (h - 2.0 * pad);
    let yr = |r: usize| h - pad - (r as f64 / rung_max) * (h - 2.0 * pad) * 0.9;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{pad}" y="20" font-size="14">{}: signal ({}, clipped at 3× high), watermarks, rung</text>"#,
        trace.name, trace.unit
    );
    // Axes.
    let _ = writeln!(
        s,
        r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - pad,
        w - right,
        h - pad
    );
    let _ = writeln!(
        s,
        r#"<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#,
        h - pad
    );
    let secs = trace
        .rows
        .last()
        .map_or(0.0, |r| r.tick as f64 * TICK.as_secs_f64());
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{secs:.0} s</text>"#,
        w - right,
        h - pad + 20.0
    );
    let _ = writeln!(s, r#"<text x="{pad}" y="{}">0 s</text>"#, h - pad + 20.0);
    let _ = writeln!(
        s,
        r#"<text x="5" y="{}">{:.3}</text>"#,
        y(y_max) + 4.0,
        y_max
    );
    // Watermarks.
    for (v, name, color) in [
        (trace.high, "high", "#d62728"),
        (trace.low, "low", "#2ca02c"),
    ] {
        let _ = writeln!(
            s,
            r#"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="{color}" stroke-dasharray="6 4"/><text x="{2}" y="{3}" fill="{color}">{name} {v:.3}</text>"#,
            y(v),
            w - right,
            w - right + 2.0,
            y(v) + 4.0
        );
    }
    // Signal, broken where there is no data.
    let mut path = String::new();
    let mut pen_down = false;
    for r in &trace.rows {
        match r.signal {
            Some(v) => {
                let _ = write!(
                    path,
                    "{}{:.1},{:.1} ",
                    if pen_down { "L" } else { "M" },
                    x(r.tick),
                    y(v)
                );
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let _ = writeln!(
        s,
        r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="1"/>"##
    );
    // Rung (step line) and what is in force.
    for (pick, color, width, label) in [
        (0usize, "#ff7f0e", 2.5, "rung"),
        (1usize, "#7f7f7f", 1.0, "in force"),
    ] {
        let mut path = String::new();
        let mut last: Option<usize> = None;
        for r in &trace.rows {
            let v = if pick == 0 { r.rung } else { r.in_force };
            match last {
                None => {
                    let _ = write!(path, "M{:.1},{:.1} ", x(r.tick), yr(v));
                }
                Some(l) if l != v => {
                    let _ = write!(
                        path,
                        "L{:.1},{:.1} L{:.1},{:.1} ",
                        x(r.tick),
                        yr(l),
                        x(r.tick),
                        yr(v)
                    );
                }
                _ => {}
            }
            last = Some(v);
        }
        if let (Some(l), Some(r)) = (last, trace.rows.last()) {
            let _ = write!(path, "L{:.1},{:.1}", x(r.tick), yr(l));
        }
        let _ = writeln!(
            s,
            r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="{width}"/>"#
        );
        let ly = if pick == 0 { 35.0 } else { 50.0 };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{ly}" fill="{color}" text-anchor="end">{label} (right axis, 0–{rung_max})</text>"#,
            w - right
        );
    }
    s.push_str("</svg>\n");
    s
}
