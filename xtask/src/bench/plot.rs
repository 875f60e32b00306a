//! A small SVG writer for the scenario plots: stacked panels sharing a time
//! axis, each with a few line series (and dashed horizontal marks for the
//! watermarks). Hand-written: a few lines of SVG, no plotting dependency.

use std::{fmt::Write as _, fs, path::Path};

/// One line on a panel.
pub struct Series {
    pub label: String,
    /// (seconds, value); non-finite values break the line.
    pub points: Vec<(f64, f64)>,
    pub color: &'static str,
    /// Drawn as steps (a rung), not straight segments.
    pub steps: bool,
}

/// A horizontal mark (a watermark).
pub struct Mark {
    pub label: String,
    pub value: f64,
    pub color: &'static str,
}

/// One panel: a y axis label, its series and marks.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    pub marks: Vec<Mark>,
}

const W: f64 = 900.0;
const PANEL_H: f64 = 170.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes `panels` over a shared time axis to `path`.
pub fn write(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let t_max = panels
        .iter()
        .flat_map(|p| {
            p.series
                .iter()
                .flat_map(|s| s.points.iter().map(|(t, _)| *t))
        })
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 30.0;
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">"#
    )?;
    writeln!(svg, r#"<rect width="{W}" height="{h}" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    )?;
    let pw = W - LEFT - RIGHT;
    for (i, p) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL_H + GAP);
        let vals = p
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|(_, v)| *v))
            .chain(p.marks.iter().map(|m| m.value))
            .filter(|v| v.is_finite());
        let v_max = vals.fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let x = |t: f64| LEFT + t / t_max * pw;
        let y = |v: f64| y0 + PANEL_H - (v / v_max).clamp(0.0, 1.0) * PANEL_H;
        writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        )?;
        writeln!(
            svg,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 5.0,
            esc(&p.title)
        )?;
        for k in 0..=4 {
            let v = v_max * f64::from(k) / 4.0;
            writeln!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
                LEFT - 4.0,
                y(v) + 4.0,
                nice(v)
            )?;
        }
        let mut legend_y = y0 + 12.0;
        for m in &p.marks {
            writeln!(
                svg,
                r#"<line x1="{LEFT}" x2="{}" y1="{yy}" y2="{yy}" stroke="{}" stroke-dasharray="5,4"/>"#,
                LEFT + pw,
                m.color,
                yy = y(m.value)
            )?;
            writeln!(
                svg,
                r#"<text x="{}" y="{legend_y}" fill="{}">- - {}</text>"#,
                LEFT + pw + 8.0,
                m.color,
                esc(&m.label)
            )?;
            legend_y += 14.0;
        }
        for s in &p.series {
            let mut d = String::new();
            let mut pen_up = true;
            let mut last_y = None;
            for &(t, v) in &s.points {
                if !v.is_finite() {
                    pen_up = true;
                    continue;
                }
                let (px, py) = (x(t), y(v));
                if pen_up {
                    write!(d, "M{px:.1},{py:.1} ")?;
                    pen_up = false;
                } else {
                    if s.steps
                        && let Some(ly) = last_y
                    {
                        write!(d, "L{px:.1},{ly:.1} ")?;
                    }
                    write!(d, "L{px:.1},{py:.1} ")?;
                }
                last_y = Some(py);
            }
            writeln!(
                svg,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                s.color
            )?;
            writeln!(
                svg,
                r#"<text x="{}" y="{legend_y}" fill="{}">— {}</text>"#,
                LEFT + pw + 8.0,
                s.color,
                esc(&s.label)
            )?;
            legend_y += 14.0;
        }
    }
    let yb = TOP + panels.len() as f64 * (PANEL_H + GAP) - GAP + 16.0;
    for k in 0..=10 {
        let t = t_max * f64::from(k) / 10.0;
        writeln!(
            svg,
            r##"<text x="{}" y="{yb}" text-anchor="middle" fill="#555">{}</text>"##,
            LEFT + t / t_max * pw,
            nice(t)
        )?;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
        LEFT + pw / 2.0,
        yb + 16.0
    )?;
    svg.push_str("</svg>\n");
    fs::write(path, svg)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
