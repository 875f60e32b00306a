//! Where the agent's log goes, and in what form.
//!
//! Under systemd (`JOURNAL_STREAM` names our stderr) lines go to journald
//! natively: each with its priority (error 3, warning 4, info 6, debug 7)
//! and the event's fields as journal fields (`POLICY=`, `ACTION=`,
//! `TARGET=` …), so `journalctl -u governor -p warning` shows what went
//! wrong. On a terminal: text with colour; elsewhere plain text without
//! ANSI codes, or one JSON object per line for other collectors.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// The log's form (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// journald when started by systemd, else text.
    #[default]
    Auto,
    /// Human-readable lines on stderr (colour only on a terminal).
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journald entries (fails over to text if journald is absent).
    Journald,
}

/// What `auto` means in this process: journald if systemd connected our
/// stderr to the journal (`JOURNAL_STREAM` is `<device>:<inode>` of it).
pub fn resolve(format: LogFormat) -> LogFormat {
    if format != LogFormat::Auto {
        return format;
    }
    let stream = std::env::var("JOURNAL_STREAM").ok();
    if stream.as_deref().is_some_and(stderr_is) {
        LogFormat::Journald
    } else {
        LogFormat::Text
    }
}

/// True if `journal_stream` (`dev:ino`, as systemd sets it) is our stderr.
fn stderr_is(journal_stream: &str) -> bool {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The journald priorities of tracing's levels: info is informational (6),
/// not notice, so that `-p notice` and `-p warning` keep their meaning.
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Installs the global subscriber; `GOVERNOR_LOG` filters (EnvFilter
/// syntax, default `info`).
pub fn init(format: LogFormat) {
    let filter =
        || EnvFilter::try_from_env("GOVERNOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter());
    match resolve(format) {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("governor".to_owned())
                    .with_priority_mappings(priorities());
                registry.with(layer).init();
            }
            Err(e) => {
                registry.with(text_layer()).init();
                tracing::warn!("journald is not reachable ({e}): logging to stderr");
            }
        },
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text | LogFormat::Auto => registry.with(text_layer()).init(),
    }
}

/// Lines written through it carry a syslog priority prefix (`<3>` for
/// errors), which journald reads off a service's stderr
/// (`SyslogLevelPrefix=`, on by default): so `governor check`, run by
/// `ExecReload=`, puts a refused config at error priority in the journal.
pub struct PriorityLines<W> {
    inner: W,
    prefix: &'static [u8],
    at_start: bool,
}

impl<W: std::io::Write> PriorityLines<W> {
    /// Every line at priority error (3).
    pub fn errors(inner: W) -> Self {
        Self {
            inner,
            prefix: b"<3>",
            at_start: true,
        }
    }
}

impl<W: std::io::Write> std::io::Write for PriorityLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_start {
                self.inner.write_all(self.prefix)?;
            }
            self.inner.write_all(line)?;
            self.at_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn text_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_journald_only_when_the_stream_is_our_stderr() {
        assert_eq!(resolve(LogFormat::Json), LogFormat::Json);
        assert!(!stderr_is("garbage"));
        assert!(!stderr_is("1:2"));
        // Our own stderr, whatever it is here, matches its own dev:ino.
        use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let meta = std::fs::File::from(fd).metadata().unwrap();
        assert!(stderr_is(&format!("{}:{}", meta.dev(), meta.ino())));
    }

    #[test]
    fn every_line_gets_the_error_prefix_once() {
        use std::io::Write as _;
        let mut w = PriorityLines::errors(Vec::new());
        write!(w, "a.toml:2:11: error: x\nhelp: y").unwrap();
        write!(w, " z\n1 error found\n").unwrap();
        assert_eq!(
            String::from_utf8(w.inner).unwrap(),
            "<3>a.toml:2:11: error: x\n<3>help: y z\n<3>1 error found\n"
        );
    }

    #[test]
    fn info_is_informational_and_warnings_are_warnings() {
        let p = priorities();
        assert_eq!(p.info as u8, b'6');
        assert_eq!(p.warn as u8, b'4');
        assert_eq!(p.error as u8, b'3');
    }
}
