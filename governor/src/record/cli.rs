//! `governor replay`: the command line around [`super::replay`].

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, UNIX_EPOCH},
};

use std::io::Write as _;

use anyhow::{Context as _, bail};

use super::{
    replay::{self, Options},
    segments,
};

/// Output of `governor replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    /// Per policy: decisions with their reasons and the figures.
    Text,
    /// One JSON object per decision, then `{"summary": …}`.
    Json,
}

/// `governor replay`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A candidate config: what would it have decided? [default: the
    /// recorded configs, which must reproduce the recorded decisions]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Report from T: an RFC 3339 time (2026-12-02T10:00:00Z), +DUR after
    /// the recording's start, or -DUR before its end.
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Stop at T (same forms as --from).
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReplayFormat::Text)]
    pub format: ReplayFormat,
    /// Also write a self-contained HTML page of charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Recording segments (rec-*.gvr.gz) or directories of them, in order.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Resolves a `--from`/`--to` value against the recording's span.
fn resolve_time(t: &str, first_ms: u64, last_ms: u64) -> anyhow::Result<u64> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if let Some(d) = t.strip_prefix('+') {
        let d = humantime::parse_duration(d).with_context(|| format!("--from/--to {t:?}"))?;
        return Ok(first_ms.saturating_add(ms(d)));
    }
    if let Some(d) = t.strip_prefix('-') {
        let d = humantime::parse_duration(d).with_context(|| format!("--from/--to {t:?}"))?;
        return Ok(last_ms.saturating_sub(ms(d)));
    }
    let at = humantime::parse_rfc3339_weak(t)
        .with_context(|| format!("--from/--to {t:?}: not an RFC 3339 time, +DUR or -DUR"))?;
    Ok(ms(at.duration_since(UNIX_EPOCH).unwrap_or_default()))
}

/// The Unix time (ms) of a frame, `start` being that of its run's start
/// (updated by starts and segment heads).
fn frame_unix_ms(f: &governor_engine::record::Frame, start: &mut u64) -> u64 {
    use governor_engine::record::Input;
    if let Input::Start {
        started_unix_ms, ..
    }
    | Input::Segment {
        started_unix_ms, ..
    } = &f.input
    {
        *start = *started_unix_ms;
    }
    start.saturating_add(u64::try_from(f.input.now().as_millis()).unwrap_or(0))
}

fn read_config(path: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Every error of the candidate, with file:line:col, before anything runs.
    governor_engine::config::from_str(&text, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((text, path.display().to_string()))
}

/// Runs `governor replay`: exit 0, or 3 if the recorded config did not
/// reproduce the recorded decisions.
pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let candidate = args.config.as_deref().map(read_config).transpose()?;
    // The span, for times relative to its ends: a first pass only when a
    // time is relative to the end.
    let relative = |c: char| {
        [&args.from, &args.to]
            .iter()
            .any(|t| t.as_deref().is_some_and(|t| t.starts_with(c)))
    };
    let (relative_to_start, relative_to_end) = (relative('+'), relative('-'));
    let (mut first, mut last) = (None, 0u64);
    let mut start = 0u64;
    let mut spanned = |f: &governor_engine::record::Frame| {
        let at = frame_unix_ms(f, &mut start);
        first.get_or_insert(at);
        last = last.max(at);
    };
    if relative_to_end {
        segments::each(&args.paths, |f| {
            spanned(&f);
            Ok(true)
        })?;
    } else if relative_to_start {
        segments::each(&args.paths, |f| {
            spanned(&f);
            Ok(false)
        })?;
    }
    let first = first.unwrap_or(0);
    let opts = Options {
        candidate,
        from_unix_ms: args
            .from
            .as_deref()
            .map(|t| resolve_time(t, first, last))
            .transpose()?,
        to_unix_ms: args
            .to
            .as_deref()
            .map(|t| resolve_time(t, first, last))
            .transpose()?,
        points: args.html.is_some(),
    };
    let mut replayer = replay::Replayer::new(opts.clone());
    let files = segments::each(&args.paths, |f| replayer.feed(&f))?;
    for (f, torn) in &files {
        if *torn {
            eprintln!(
                "governor: {} ends mid-frame (a crash, or a segment still being written): replayed up to there",
                f.display()
            );
        }
    }
    let r = replayer.finish();
    if r.ticks == 0 && r.live.is_empty() {
        bail!("the recording holds no ticks in the span asked");
    }
    let body = match args.format {
        ReplayFormat::Text => replay::text(&r, &opts),
        ReplayFormat::Json => replay::json(&r, &opts),
    };
    // A reader that stops early (`| head`) is not an error.
    let mut out = std::io::stdout().lock();
    match out.write_all(body.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the report");
        }
        _ => {}
    }
    if let (Some(path), Some(mut report)) = (&args.html, r.report.clone()) {
        let names: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        report.title = match &opts.candidate {
            Some((_, name)) => format!("{name} replayed on {}", names.join(", ")),
            None => format!("replay of {}", names.join(", ")),
        };
        std::fs::write(path, super::html::html(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("governor: wrote {}", path.display());
    }
    Ok(if opts.candidate.is_none() && !r.mismatches.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn times_are_absolute_or_relative_to_either_end() {
        let (a, b) = (1_000_000u64, 5_000_000u64);
        assert_eq!(resolve_time("+10s", a, b).unwrap(), a + 10_000);
        assert_eq!(resolve_time("-1m", a, b).unwrap(), b - 60_000);
        assert_eq!(
            resolve_time("1970-01-01T00:16:40Z", a, b).unwrap(),
            1_000_000
        );
        let err = resolve_time("yesterday", a, b).unwrap_err();
        assert!(
            format!("{err:#}").contains("not an RFC 3339 time"),
            "{err:#}"
        );
    }
}
