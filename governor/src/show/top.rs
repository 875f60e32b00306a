//! `governor top`: a full-screen view of the running agent, polled from its
//! status socket: per policy its rung, value, watermarks and a chart of the
//! signal; the last decisions with their reasons; the cgroups waiting
//! longest on a run queue; the listening ports with their accept queues.
//! Off a terminal (or with `--once`) it prints plain blocks instead.
//!
//! Everything drawn is built first by pure functions ([`History`],
//! [`PolicyPanel::new`], [`plain`]) that the unit tests check; the terminal
//! part only lays them out.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Borders, Cell, Chart, Dataset, GraphType, Paragraph, Row, Table, Wrap},
};

use governor_engine::config::Level;

use super::status::{self, PolicyView, StatusReport};

/// Samples of each policy's signal kept for its chart.
pub const HISTORY: usize = 120;

/// What `governor top` is asked to do.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// The agent's status socket.
    pub socket: PathBuf,
    /// How often the socket is polled.
    pub interval: Duration,
    /// Print one plain block and exit (1 if the agent does not answer).
    pub once: bool,
}

/// The last [`HISTORY`] values of every policy's signal, as (seconds since
/// the agent started, value in the unit's base).
#[derive(Debug, Default)]
pub struct History {
    series: HashMap<String, VecDeque<(f64, f64)>>,
    last_uptime: Option<f64>,
    cap: usize,
}

impl History {
    /// Empty, keeping `cap` samples per policy.
    pub fn new(cap: usize) -> Self {
        Self {
            series: HashMap::new(),
            last_uptime: None,
            cap: cap.max(2),
        }
    }

    /// Adds a report's values. A report no newer than the last one adds
    /// nothing; one older (the agent restarted) starts the history again;
    /// policies no longer reported are forgotten.
    pub fn push(&mut self, r: &StatusReport) {
        if let Some(last) = self.last_uptime {
            if r.uptime_s < last {
                self.series.clear();
            } else if r.uptime_s == last {
                return;
            }
        }
        self.last_uptime = Some(r.uptime_s);
        self.series
            .retain(|name, _| r.policies.iter().any(|p| p.name == *name));
        for p in &r.policies {
            let s = self.series.entry(p.name.clone()).or_default();
            if let Some(v) = p.value_base {
                s.push_back((r.uptime_s, v));
                while s.len() > self.cap {
                    s.pop_front();
                }
            }
        }
    }

    /// The samples of `policy`, oldest first.
    pub fn samples(&self, policy: &str) -> Vec<(f64, f64)> {
        self.series
            .get(policy)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A value of a report in its unit, as the config writes it (`2ms`, `0.8`,
/// `200/s`); a bare number if the unit is unknown.
pub fn fmt_value(value: f64, unit: &str) -> String {
    match status::unit_of(unit) {
        Some(unit) => Level { unit, value }.to_string(),
        None => {
            let s = format!("{value:.3}");
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
    }
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten at or above `x` (> 0):
/// an axis top whose labels read well.
pub fn nice_ceil(x: f64) -> f64 {
    let pow = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|&v| v >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * pow)
}

/// What one policy's block shows: its text lines and its chart's data.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyPanel {
    /// The block's title: name, rung, mode.
    pub title: String,
    /// The lines beside the chart.
    pub lines: Vec<String>,
    /// The signal: (seconds before the last report, ≤ 0; value).
    pub signal: Vec<(f64, f64)>,
    /// The high watermark as a line across the chart, with its label.
    pub high: Option<(String, [(f64, f64); 2])>,
    /// The low watermark as a line across the chart, with its label.
    pub low: Option<(String, [(f64, f64); 2])>,
    /// The x axis: [-window, 0] seconds.
    pub x_bounds: [f64; 2],
    /// The y axis: [0, top] in the unit's base.
    pub y_bounds: [f64; 2],
    /// Labels of the y axis: bottom, middle, top.
    pub y_labels: [String; 3],
    /// Labels of the x axis: oldest, middle, now.
    pub x_labels: [String; 3],
    /// True if the policy is stepped up (rung > 0).
    pub stepped_up: bool,
}

impl PolicyPanel {
    /// The block of `p`, with `samples` (from [`History::samples`]) taken
    /// up to `now_s` and a chart `window_s` seconds wide.
    pub fn new(p: &PolicyView, samples: &[(f64, f64)], now_s: f64, window_s: f64) -> Self {
        let window = window_s.max(1.0);
        let signal: Vec<(f64, f64)> = samples
            .iter()
            .map(|&(t, v)| (t - now_s, v))
            .filter(|&(t, _)| t >= -window)
            .collect();
        let line = |v: f64| [(-window, v), (0.0, v)];
        let high = p
            .high
            .map(|h| (format!("high {}", fmt_value(h, &p.unit)), line(h)));
        let low = p
            .low
            .map(|l| (format!("low {}", fmt_value(l, &p.unit)), line(l)));
        let peak = signal
            .iter()
            .map(|&(_, v)| v)
            .chain(p.high)
            .chain(p.low)
            .fold(0.0_f64, f64::max);
        // Room above the high watermark so that its line is not the frame.
        let top = if peak > 0.0 {
            nice_ceil(peak * 1.2)
        } else {
            1.0
        };
        let mut lines = Vec::new();
        let value = match (p.value_base, &p.value) {
            (Some(v), _) => fmt_value(v, &p.unit),
            (None, Some(text)) => text.clone(),
            (None, None) => "-".to_owned(),
        };
        lines.push(format!("value {value}"));
        let marks = match (p.high, p.low) {
            (Some(h), Some(l)) => format!(
                "high {}  low {}",
                fmt_value(h, &p.unit),
                fmt_value(l, &p.unit)
            ),
            _ => "watermarks: not reported by this agent".to_owned(),
        };
        lines.push(marks);
        let mut state = Vec::new();
        if p.no_data {
            state.push("no data (holding)".to_owned());
        }
        if p.flap_held {
            state.push("flap budget spent (holding)".to_owned());
        }
        if p.retrips > 0 {
            state.push(format!("backoff ×{}", p.retrips));
        }
        if let Some(s) = p.next_step_down_in_s {
            state.push(format!("next step down in {s:.1}s"));
        }
        if !state.is_empty() {
            lines.push(state.join(", "));
        }
        if let Some(f) = &p.failed {
            lines.push(format!(
                "FAILED to {} rung {} ({} in a row, retry in {:.1}s): {}",
                f.change, f.rung, f.attempts, f.retry_in_s, f.error
            ));
        }
        if !p.why.is_empty() {
            lines.push(format!("why: {}", p.why));
        }
        Self {
            title: format!(
                " {}  rung {}/{}  {} ",
                p.name,
                p.rung,
                p.rungs,
                if p.dry_run { "dry-run" } else { "live" }
            ),
            lines,
            signal,
            high,
            low,
            x_bounds: [-window, 0.0],
            y_bounds: [0.0, top],
            y_labels: [
                "0".to_owned(),
                fmt_value(top / 2.0, &p.unit),
                fmt_value(top, &p.unit),
            ],
            x_labels: [
                format!("-{window:.0}s"),
                format!("-{:.0}s", window / 2.0),
                "now".to_owned(),
            ],
            stepped_up: p.rung > 0,
        }
    }
}

/// The report as plain text: `governor status`'s table, each policy's
/// watermarks, the top cgroups and the ports.
pub fn plain(r: &StatusReport) -> String {
    let mut out = r.table();
    if !r.policies.is_empty() {
        let _ = writeln!(out, "watermarks:");
        for p in &r.policies {
            let _ = match (p.high, p.low) {
                (Some(h), Some(l)) => writeln!(
                    out,
                    "  {}: high {}  low {}",
                    p.name,
                    fmt_value(h, &p.unit),
                    fmt_value(l, &p.unit)
                ),
                _ => writeln!(out, "  {}: not reported", p.name),
            };
        }
    }
    if let Some(h) = &r.host_runq {
        let _ = writeln!(
            out,
            "host run queue: {} waits, p50 {}µs, p99 {}µs, max {}µs",
            h.count, h.p50_us, h.p99_us, h.max_us
        );
    }
    if !r.top_cgroups.is_empty() {
        let _ = writeln!(
            out,
            "{:<48} {:>8} {:>8} {:>8} {:>9}",
            "CGROUP (by run-queue p99)", "WAITS", "P50µs", "P99µs", "MAXµs"
        );
        for c in &r.top_cgroups {
            let _ = writeln!(
                out,
                "{:<48} {:>8} {:>8} {:>8} {:>9}",
                c.path, c.waits, c.p50_us, c.p99_us, c.max_us
            );
            if !c.culprits.is_empty() {
                let who: Vec<String> = (c.culprits.iter())
                    .map(|k| {
                        let name = if k.cgroup == c.path {
                            "itself"
                        } else {
                            &k.cgroup
                        };
                        format!("{name} {:.0}%", k.share * 100.0)
                    })
                    .collect();
                let _ = writeln!(out, "  waited behind: {}", who.join(", "));
            }
        }
        if r.more_cgroups > 0 {
            let _ = writeln!(out, "… {} more cgroups", r.more_cgroups);
        }
    }
    if !r.ports.is_empty() {
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>8} {:>12} {:>10}",
            "PORT", "QUEUE", "BACKLOG", "ACCEPTED/S", "OVERFLOWS"
        );
        for p in &r.ports {
            let _ = writeln!(
                out,
                "{:<8} {:>8} {:>8} {:>12.1} {:>10}",
                p.port, p.accept_queue, p.accept_queue_max, p.accepted_per_s, p.overflows
            );
        }
    }
    out
}

/// The line shown while the agent does not answer.
pub fn unreachable_line(socket: &Path, error: &str, interval: Duration) -> String {
    format!(
        "agent not reachable at {}, retrying every {}: {error}",
        socket.display(),
        humantime::format_duration(interval)
    )
}

/// Runs `governor top`: full screen on a terminal, else plain blocks.
pub fn run(opts: &TopOptions) -> anyhow::Result<()> {
    if opts.once {
        let r = status::fetch(&opts.socket)?;
        print!("{}", plain(&r));
        return Ok(());
    }
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        full_screen(opts)
    } else {
        plain_loop(opts)
    }
}

/// One plain block per poll, until stdout goes away.
fn plain_loop(opts: &TopOptions) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    loop {
        let text = match status::fetch(&opts.socket) {
            Ok(r) => plain(&r),
            Err(e) => format!(
                "{}\n",
                unreachable_line(&opts.socket, &format!("{e:#}"), opts.interval)
            ),
        };
        // A closed pipe (`governor top | head`) ends it quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        std::thread::sleep(opts.interval);
    }
}

/// Set by SIGTERM, SIGHUP and SIGINT while the screen is ours: the loop
/// quits and restores the terminal.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Restores the terminal when dropped: on return, on error and on unwind
/// (a panic is covered by ratatui's hook too).
struct Screen;

impl Drop for Screen {
    fn drop(&mut self) {
        // Not `ratatui::restore`: it prints its error, which panics when
        // the terminal has hung up.
        let _ = ratatui::try_restore();
        let _ = ratatui::crossterm::execute!(std::io::stdout(), ratatui::crossterm::cursor::Show);
    }
}

/// What the screen shows between polls.
struct View {
    socket: PathBuf,
    interval: Duration,
    history: History,
    report: Option<StatusReport>,
    error: Option<String>,
    last_ok: Option<Instant>,
    scroll: usize,
}

impl View {
    fn apply(&mut self, r: Result<StatusReport, String>) {
        match r {
            Ok(r) => {
                self.history.push(&r);
                self.report = Some(r);
                self.error = None;
                self.last_ok = Some(Instant::now());
            }
            Err(e) => self.error = Some(e),
        }
    }
}

fn full_screen(opts: &TopOptions) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let socket = opts.socket.clone();
    let interval = opts.interval;
    // Polls on a thread of its own: a slow agent never stalls the keys.
    std::thread::Builder::new()
        .name("top-poll".into())
        .spawn(move || {
            loop {
                let r = status::fetch(&socket).map_err(|e| format!("{e:#}"));
                if tx.send(r).is_err() {
                    return;
                }
                std::thread::sleep(interval);
            }
        })?;
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    // Before init: a half-done init is undone too.
    let _screen = Screen;
    let mut terminal = ratatui::try_init()?;
    let mut view = View {
        socket: opts.socket.clone(),
        interval: opts.interval,
        history: History::new(HISTORY),
        report: None,
        error: None,
        last_ok: None,
        scroll: 0,
    };
    let mut dirty = true;
    let mut size = terminal.size().ok();
    'run: while !STOP.load(Ordering::Relaxed) {
        while let Ok(r) = rx.try_recv() {
            view.apply(r);
            dirty = true;
        }
        // Resizes are seen here (crossterm's are only read with keys).
        let now = terminal.size().ok();
        if now != size {
            size = now;
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| draw(f, &view))?;
            dirty = false;
        }
        // Waited for here, not in crossterm: its reader spins on the end of
        // input of a terminal that hung up (tmux killed, ssh gone).
        match wait_input(Duration::from_millis(100))? {
            Input::HungUp => break 'run,
            Input::None => continue,
            Input::Ready => {}
        }
        while !STOP.load(Ordering::Relaxed) && event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => break 'run,
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        break 'run;
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        view.scroll = view.scroll.saturating_add(1);
                        dirty = true;
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        view.scroll = view.scroll.saturating_sub(1);
                        dirty = true;
                    }
                    _ => {}
                },
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}

/// What the terminal has for us.
enum Input {
    /// Nothing within the timeout.
    None,
    /// Bytes to read.
    Ready,
    /// It hung up: nobody is looking.
    HungUp,
}

/// Waits up to `timeout` for input on stdin (the terminal).
fn wait_input(timeout: Duration) -> std::io::Result<Input> {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the length given.
    let r = unsafe { libc::poll(&mut fd, 1, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(Input::None)
        } else {
            Err(e)
        };
    }
    if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Ok(Input::HungUp);
    }
    Ok(if r > 0 { Input::Ready } else { Input::None })
}

/// Rows of one policy's block.
const POLICY_ROWS: u16 = 9;

fn draw(f: &mut Frame<'_>, v: &View) {
    let area = f.area();
    let [head, body] = Layout::vertical([Constraint::Length(3), Constraint::Min(0)]).areas(area);
    draw_header(f, head, v);
    let Some(r) = &v.report else {
        return;
    };
    let bottom_rows = 16.min(body.height / 2).max(6);
    let fit = usize::from(body.height.saturating_sub(bottom_rows) / POLICY_ROWS).max(1);
    let first = v.scroll.min(r.policies.len().saturating_sub(fit));
    let shown: Vec<&PolicyView> = r.policies.iter().skip(first).take(fit).collect();
    let policy_rows = POLICY_ROWS * u16::try_from(shown.len()).unwrap_or(1);
    let [pol, rest] =
        Layout::vertical([Constraint::Length(policy_rows), Constraint::Min(0)]).areas(body);
    let window = v.interval.as_secs_f64() * HISTORY as f64;
    let rows = Layout::vertical(shown.iter().map(|_| Constraint::Length(POLICY_ROWS))).split(pol);
    for (p, area) in shown.iter().zip(rows.iter()) {
        let panel = PolicyPanel::new(p, &v.history.samples(&p.name), r.uptime_s, window);
        draw_policy(f, *area, &panel);
    }
    let more = if r.policies.len() > shown.len() {
        format!(
            " policies {}–{} of {} (↑/↓) ",
            first + 1,
            first + shown.len(),
            r.policies.len()
        )
    } else {
        String::new()
    };
    let decisions_rows = u16::try_from(r.recent.len().min(6)).unwrap_or(6) + 2;
    let [dec, tables] =
        Layout::vertical([Constraint::Length(decisions_rows), Constraint::Min(0)]).areas(rest);
    draw_decisions(f, dec, r, &more);
    let [cg, ports] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(tables);
    draw_cgroups(f, cg, r);
    draw_ports(f, ports, r);
}

fn draw_header(f: &mut Frame<'_>, area: Rect, v: &View) {
    let mut lines = Vec::new();
    match &v.report {
        Some(r) => {
            let mode = if r.dry_run {
                Span::styled(
                    "DRY-RUN (nothing is changed)",
                    Style::default().fg(Color::Yellow),
                )
            } else {
                Span::styled("LIVE", Style::default().fg(Color::Red))
            };
            let host = r
                .host_runq
                .map(|h| format!(" | host runq p50 {}µs p99 {}µs", h.p50_us, h.p99_us))
                .unwrap_or_default();
            lines.push(Line::from(vec![
                Span::styled(
                    "governor top ",
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!("{} | ", r.config)),
                mode,
                Span::raw(format!(
                    " | up {:.0}s | tick {}ms{host}",
                    r.uptime_s, r.tick_ms
                )),
            ]));
        }
        None => lines.push(Line::from(Span::styled(
            "governor top",
            Style::default().add_modifier(Modifier::BOLD),
        ))),
    }
    match &v.error {
        Some(e) => lines.push(Line::from(Span::styled(
            unreachable_line(&v.socket, e, v.interval),
            Style::default().fg(Color::Red),
        ))),
        None => {
            let missing = v
                .report
                .as_ref()
                .map(|r| {
                    r.missing
                        .iter()
                        .chain(r.drift.iter().map(|d| d as &String))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            lines.push(Line::from(Span::styled(
                if missing.is_empty() {
                    format!("socket {}", v.socket.display())
                } else {
                    format!("missing/drift: {missing}")
                },
                Style::default().fg(Color::DarkGray),
            )));
        }
    }
    let ago = v
        .last_ok
        .map(|t| format!("updated {:.1}s ago", t.elapsed().as_secs_f64()))
        .unwrap_or_else(|| "waiting for the agent".into());
    lines.push(Line::from(Span::styled(
        format!(
            "q quit  ↑/↓ scroll  every {}  {ago}",
            humantime::format_duration(v.interval)
        ),
        Style::default().fg(Color::DarkGray),
    )));
    f.render_widget(Paragraph::new(lines), area);
}

fn draw_policy(f: &mut Frame<'_>, area: Rect, panel: &PolicyPanel) {
    let title_style = if panel.stepped_up {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default().add_modifier(Modifier::BOLD)
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(panel.title.clone(), title_style));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [text, chart] =
        Layout::horizontal([Constraint::Length(46), Constraint::Min(10)]).areas(inner);
    // The value and the watermarks in the colours of their lines: the
    // chart's key.
    let lines: Vec<Line<'_>> = panel
        .lines
        .iter()
        .map(|l| {
            if l.starts_with("value ") {
                Line::styled(l.as_str(), Style::default().fg(Color::Cyan))
            } else if let Some((high, low)) = l.split_once("  low ")
                && l.starts_with("high ")
            {
                Line::from(vec![
                    Span::styled(high, Style::default().fg(Color::Red)),
                    Span::raw("  "),
                    Span::styled(format!("low {low}"), Style::default().fg(Color::Green)),
                ])
            } else {
                Line::raw(l.as_str())
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), text);

    let mut datasets = Vec::new();
    if let Some((_, points)) = &panel.high {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(Color::Red))
                .data(points),
        );
    }
    if let Some((_, points)) = &panel.low {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(Color::Green))
                .data(points),
        );
    }
    datasets.push(
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Cyan))
            .data(&panel.signal),
    );
    let chart_widget = Chart::new(datasets)
        .x_axis(
            Axis::default()
                .bounds(panel.x_bounds)
                .labels(panel.x_labels.clone())
                .style(Style::default().fg(Color::DarkGray)),
        )
        .y_axis(
            Axis::default()
                .bounds(panel.y_bounds)
                .labels(panel.y_labels.clone())
                .style(Style::default().fg(Color::DarkGray)),
        );
    f.render_widget(chart_widget, chart);
}

fn draw_decisions(f: &mut Frame<'_>, area: Rect, r: &StatusReport, more: &str) {
    let lines: Vec<Line<'_>> = if r.recent.is_empty() {
        vec![Line::styled(
            "no decisions yet",
            Style::default().fg(Color::DarkGray),
        )]
    } else {
        r.recent
            .iter()
            .rev()
            .take(usize::from(area.height.saturating_sub(2)))
            .map(|d| {
                let style = match (d.error.is_some(), d.kind.as_str()) {
                    (true, _) => Style::default().fg(Color::Red),
                    (_, "applied") => Style::default().fg(Color::Yellow),
                    (_, "reverted") => Style::default().fg(Color::Green),
                    _ => Style::default(),
                };
                let failed = d
                    .error
                    .as_deref()
                    .map(|e| format!("  [FAILED: {e}]"))
                    .unwrap_or_default();
                Line::styled(format!("{:>8.1}s {}{failed}", d.at_s, d.text), style)
            })
            .collect()
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" recent decisions (newest first) ")
        .title_bottom(more.to_owned());
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_cgroups(f: &mut Frame<'_>, area: Rect, r: &StatusReport) {
    let rows = r.top_cgroups.iter().map(|c| {
        Row::new(vec![
            Cell::from(c.path.clone()),
            Cell::from(c.waits.to_string()),
            Cell::from(c.p50_us.to_string()),
            Cell::from(c.p99_us.to_string()),
            Cell::from(c.max_us.to_string()),
        ])
    });
    let title = if r.more_cgroups > 0 {
        format!(" cgroups by run-queue p99 (µs), {} more ", r.more_cgroups)
    } else {
        " cgroups by run-queue p99 (µs) ".to_owned()
    };
    let table = Table::new(
        rows,
        [
            Constraint::Min(20),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(vec!["CGROUP", "WAITS", "P50", "P99", "MAX"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(title));
    f.render_widget(table, area);
}

fn draw_ports(f: &mut Frame<'_>, area: Rect, r: &StatusReport) {
    let rows = r.ports.iter().map(|p| {
        Row::new(vec![
            Cell::from(p.port.to_string()),
            Cell::from(format!("{}/{}", p.accept_queue, p.accept_queue_max)),
            Cell::from(format!("{:.1}", p.accepted_per_s)),
            Cell::from(p.overflows.to_string()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(6),
        ],
    )
    .header(
        Row::new(vec!["PORT", "QUEUE", "ACCEPT/s", "OVERFL"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" ports by accept queue "),
    );
    f.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::show::status::{CgroupView, PortView};

    fn view(name: &str, value: Option<f64>) -> PolicyView {
        PolicyView {
            name: name.into(),
            rung: 1,
            rungs: 2,
            dry_run: true,
            value: value.map(|v| format!("{v}us")),
            flap_held: false,
            no_data: value.is_none(),
            retrips: 0,
            next_step_down_in_s: None,
            failed: None,
            why: "over high 2ms for 0.5s".into(),
            value_base: value,
            unit: "us".into(),
            high: Some(2000.0),
            low: Some(500.0),
        }
    }

    fn report(uptime_s: f64, policies: Vec<PolicyView>) -> StatusReport {
        StatusReport {
            config: "test.toml".into(),
            dry_run: true,
            tick_ms: 100,
            uptime_s,
            policies,
            recent: Vec::new(),
            missing: Vec::new(),
            drift: Vec::new(),
            host_runq: None,
            top_cgroups: Vec::new(),
            more_cgroups: 0,
            ports: Vec::new(),
        }
    }

    #[test]
    fn history_keeps_the_last_samples_and_skips_repeats() {
        let mut h = History::new(3);
        for i in 0..5 {
            h.push(&report(
                f64::from(i),
                vec![view("p", Some(f64::from(i) * 10.0))],
            ));
        }
        // The same report polled twice adds nothing.
        h.push(&report(4.0, vec![view("p", Some(999.0))]));
        assert_eq!(h.samples("p"), [(2.0, 20.0), (3.0, 30.0), (4.0, 40.0)]);
        // No value: no sample, but the history stays.
        h.push(&report(5.0, vec![view("p", None)]));
        assert_eq!(h.samples("p").len(), 3);
    }

    #[test]
    fn history_restarts_with_the_agent_and_forgets_removed_policies() {
        let mut h = History::new(10);
        h.push(&report(
            50.0,
            vec![view("a", Some(1.0)), view("b", Some(2.0))],
        ));
        h.push(&report(51.0, vec![view("a", Some(3.0))]));
        assert_eq!(h.samples("a"), [(50.0, 1.0), (51.0, 3.0)]);
        assert!(h.samples("b").is_empty(), "b was removed by a reload");
        // Uptime went back: a new agent; its history starts afresh.
        h.push(&report(1.0, vec![view("a", Some(7.0))]));
        assert_eq!(h.samples("a"), [(1.0, 7.0)]);
    }

    #[test]
    fn a_panel_shows_rung_value_and_watermarks_and_charts_them() {
        let p = view("api-latency", Some(2500.0));
        let samples = [(0.0, 100.0), (50.0, 1500.0), (100.0, 2500.0)];
        let panel = PolicyPanel::new(&p, &samples, 100.0, 60.0);
        assert_eq!(panel.title, " api-latency  rung 1/2  dry-run ");
        assert!(panel.stepped_up);
        assert_eq!(panel.lines[0], "value 2.5ms");
        assert_eq!(panel.lines[1], "high 2ms  low 500us");
        assert!(
            panel
                .lines
                .iter()
                .any(|l| l == "why: over high 2ms for 0.5s")
        );
        // Only what fits the window, relative to the last report.
        assert_eq!(panel.signal, [(-50.0, 1500.0), (0.0, 2500.0)]);
        let (label, line) = panel.high.clone().unwrap();
        assert_eq!(label, "high 2ms");
        assert_eq!(line, [(-60.0, 2000.0), (0.0, 2000.0)]);
        assert_eq!(panel.low.clone().unwrap().0, "low 500us");
        // The top leaves room above the highest of signal and watermarks.
        assert_eq!(panel.y_bounds, [0.0, 5000.0]);
        assert_eq!(panel.x_bounds, [-60.0, 0.0]);
        assert_eq!(panel.x_labels[2], "now");
        assert_eq!(panel.y_labels, ["0", "2.5ms", "5ms"]);
    }

    #[test]
    fn a_panel_of_an_old_agent_says_the_watermarks_are_unknown() {
        let mut p = view("old", None);
        p.high = None;
        p.low = None;
        p.unit = String::new();
        p.value = Some("1ms".into());
        let panel = PolicyPanel::new(&p, &[], 10.0, 120.0);
        assert_eq!(panel.lines[0], "value 1ms");
        assert!(panel.lines[1].contains("not reported"));
        assert!(panel.high.is_none() && panel.low.is_none());
        assert!(panel.lines.iter().any(|l| l.contains("no data")));
        assert_eq!(panel.y_bounds, [0.0, 1.0]);
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceil(2400.0), 2500.0);
        assert_eq!(nice_ceil(2600.0), 5000.0);
        assert_eq!(nice_ceil(0.9 * 1.2), 2.0);
        assert_eq!(nice_ceil(0.12), 0.2);
        assert_eq!(nice_ceil(1000.0), 1000.0);
        assert_eq!(nice_ceil(7.0), 10.0);
    }

    #[test]
    fn values_are_written_as_the_config_writes_them() {
        assert_eq!(fmt_value(2000.0, "us"), "2ms");
        assert_eq!(fmt_value(300.0, "us"), "300us");
        assert_eq!(fmt_value(0.8, "ratio"), "0.8");
        assert_eq!(fmt_value(200.0, "/s"), "200/s");
        assert_eq!(fmt_value(1.5, ""), "1.5");
    }

    #[test]
    fn plain_has_the_status_watermarks_cgroups_and_ports() {
        let mut r = report(12.0, vec![view("api-latency", Some(2500.0))]);
        r.top_cgroups = vec![CgroupView {
            path: "/workload/batch".into(),
            waits: 40,
            p50_us: 8,
            p99_us: 4096,
            max_us: 8192,
            culprits: Vec::new(),
        }];
        r.more_cgroups = 3;
        r.ports = vec![PortView {
            port: 8080,
            accept_queue: 17,
            accept_queue_max: 128,
            accepted_per_s: 250.0,
            overflows: 2,
        }];
        let text = plain(&r);
        assert!(text.starts_with(&r.table()), "{text}");
        assert!(
            text.contains("  api-latency: high 2ms  low 500us"),
            "{text}"
        );
        let cg = text
            .lines()
            .find(|l| l.starts_with("/workload/batch"))
            .unwrap();
        assert_eq!(
            cg.split_whitespace().collect::<Vec<_>>(),
            ["/workload/batch", "40", "8", "4096", "8192"]
        );
        assert!(text.contains("… 3 more cgroups"));
        let port = text.lines().find(|l| l.starts_with("8080")).unwrap();
        assert_eq!(
            port.split_whitespace().collect::<Vec<_>>(),
            ["8080", "17", "128", "250.0", "2"]
        );
    }

    #[test]
    fn the_screen_draws_policy_watermarks_chart_and_tables() {
        use ratatui::{Terminal, backend::TestBackend};
        let mut r = report(30.0, vec![view("api-latency", Some(2500.0))]);
        r.ports = vec![PortView {
            port: 8080,
            accept_queue: 17,
            accept_queue_max: 128,
            accepted_per_s: 250.0,
            overflows: 2,
        }];
        r.top_cgroups = vec![CgroupView {
            path: "/workload/batch".into(),
            waits: 40,
            p50_us: 8,
            p99_us: 4096,
            max_us: 8192,
            culprits: Vec::new(),
        }];
        let mut v = View {
            socket: "/run/x.sock".into(),
            interval: Duration::from_secs(1),
            history: History::new(HISTORY),
            report: None,
            error: None,
            last_ok: None,
            scroll: 0,
        };
        v.apply(Ok(report(29.0, vec![view("api-latency", Some(100.0))])));
        v.apply(Ok(r));
        let mut t = Terminal::new(TestBackend::new(160, 48)).unwrap();
        t.draw(|f| draw(f, &v)).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .chunks(160)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        assert!(screen.contains("api-latency  rung 1/2"), "{screen}");
        assert!(screen.contains("high 2ms  low 500us"), "{screen}");
        assert!(screen.contains("/workload/batch"), "{screen}");
        assert!(screen.contains("17/128"), "{screen}");
        assert!(
            screen
                .chars()
                .any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)),
            "no chart (braille) on screen:\n{screen}"
        );
        // The agent went away: said so, the last report stays.
        v.apply(Err("connection refused".into()));
        t.draw(|f| draw(f, &v)).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(
            screen.contains(
                "agent not reachable at /run/x.sock, retrying every 1s: connection refused"
            ),
            "{screen}"
        );
        assert!(screen.contains("api-latency"));
    }
}
