//! Reading the config file: `--config`, else `/etc/governor/governor.toml`,
//! else the embedded default; and `governor check`. The parsing and every
//! check are the engine's ([`governor_engine::config`]); this is the I/O.

use std::{io::Write, path::Path};

use governor_engine::config::{
    Config, ConfigError, ConfigErrors, DEFAULT_PATH, EMBEDDED_DEFAULT, EMBEDDED_NAME, LoadOptions,
    from_str_with, units,
};

/// Loads the configuration `run` uses: `path`, else [`DEFAULT_PATH`] if it
/// exists, else [`EMBEDDED_DEFAULT`]. Returns it with the name of its source.
pub fn load(path: Option<&Path>) -> Result<(Config, String), ConfigErrors> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with the agent's [`LoadOptions`].
pub fn load_with(
    path: Option<&Path>,
    options: &LoadOptions,
) -> Result<(Config, String), ConfigErrors> {
    load_text_with(path, options).map(|(c, name, _)| (c, name))
}

/// [`load_with`], also returning the text it parsed (what a recording
/// keeps, so that a replay parses the same config).
pub fn load_text_with(
    path: Option<&Path>,
    options: &LoadOptions,
) -> Result<(Config, String, String), ConfigErrors> {
    let default = Path::new(DEFAULT_PATH);
    let path = match path {
        Some(p) => Some(p),
        None if default.exists() => Some(default),
        None => None,
    };
    let Some(path) = path else {
        return from_str_with(EMBEDDED_DEFAULT, EMBEDDED_NAME, options)
            .map(|c| (c, EMBEDDED_NAME.to_owned(), EMBEDDED_DEFAULT.to_owned()));
    };
    let name = path.display().to_string();
    if let Some((problem, help)) = unsafe_owner_or_mode(path) {
        return Err(ConfigErrors {
            source_name: name,
            errors: vec![ConfigError::unlocated(problem, help)],
        });
    }
    let source = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source_name: name.clone(),
        errors: vec![ConfigError::unlocated(
            format!("cannot read the config: {e}"),
            "check the path given to --config, or leave it out to use /etc/governor/governor.toml or the built-in default",
        )],
    })?;
    from_str_with(&source, &name, options).map(|c| (c, name, source))
}

/// Why a config file may not be trusted, with how to fix it: the agent
/// runs as root and acts on what it says, so, like sshd's `StrictModes`, a
/// file someone else may write (owned by another user, or group/world
/// writable) is refused. `None` if it is fine or cannot be read (the read
/// then says why).
fn unsafe_owner_or_mode(path: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let shown = path.display();
    if meta.uid() != 0 && meta.uid() != me {
        return Some((
            format!(
                "the config is owned by uid {}, not root: another user could change what the agent does",
                meta.uid()
            ),
            format!("chown root: {shown}"),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some((
            format!(
                "the config is writable by its group or by everyone (mode {:o})",
                meta.mode() & 0o7777
            ),
            format!("chmod go-w {shown}"),
        ));
    }
    None
}

/// `governor check [--config PATH]`: prints a summary to `out` and returns 0,
/// or prints every error to `err` and returns 2.
pub fn check_command(config: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    // Write errors on the terminal are not worth a different exit code.
    match load(config) {
        Ok((config, name)) => {
            let _ = write_summary(&config, &name, out);
            0
        }
        Err(errors) => {
            let _ = write!(err, "{errors}");
            let n = errors.errors.len();
            let _ = writeln!(
                err,
                "{}: {n} error{} found; nothing was loaded",
                errors.source_name,
                if n == 1 { "" } else { "s" }
            );
            2
        }
    }
}

fn write_summary(config: &Config, name: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let n = config.policies.len();
    let mode = if config.agent.dry_run {
        "dry-run: decisions are reported, nothing is changed"
    } else {
        "live"
    };
    writeln!(
        out,
        "{name}: ok: {n} polic{}, {mode}",
        if n == 1 { "y" } else { "ies" }
    )?;
    for p in &config.policies {
        let dry = if p.is_dry_run(&config.agent) {
            " (dry-run)"
        } else {
            ""
        };
        writeln!(
            out,
            "  {}{dry}: {} high {} low {} for {}, {} rung{}",
            p.name,
            p.signal,
            p.watermarks.high,
            p.watermarks.low,
            units::format_duration(p.hold_for),
            p.ladder.len(),
            if p.ladder.len() == 1 { "" } else { "s" },
        )?;
        if let Some(g) = &p.guard {
            writeln!(out, "    {}", explain_guard(g))?;
        }
    }
    Ok(())
}

/// What a policy's accept-queue guard does, in one line.
fn explain_guard(g: &governor_engine::decide::guard::GuardSpec) -> String {
    use governor_engine::decide::guard::MaxQueue;
    let ceiling = match g.max_queue {
        MaxQueue::Count(n) => format!("{n} connections"),
        MaxQueue::Share(r) => format!("{:.0}% of the listener's backlog", r.get() * 100.0),
    };
    let bound = match g.max_delay {
        Some(d) => format!(
            "bound = drain rate x {} (Little's law), between {} and {ceiling}",
            units::format_duration(d),
            g.min
        ),
        None => format!("bound = {ceiling}"),
    };
    let answer = match g.mode {
        governor_engine::config::RejectMode::Reset => "RST",
        governor_engine::config::RejectMode::Drop => "dropped SYN",
    };
    format!(
        "guard on :{}, armed from the start (at min until a drain is measured): new connections get {answer} while the accept queue holds the bound or more; {bound}; relaxed to the ceiling after {} empty (needs Linux >= {} with BTF)",
        g.port,
        units::format_duration(g.relax_after),
        crate::act::net::GUARD_MIN_KERNEL,
    )
}

/// The `[agent]` keys whose new value a reload cannot put in force (they
/// are read once at start): what differs between the running config and
/// the reloaded one, so that the agent says so instead of ignoring them.
/// `dry_run` and `protect` are applied at reload.
pub fn needs_restart(
    running: &governor_engine::config::AgentConfig,
    reloaded: &governor_engine::config::AgentConfig,
) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if running.tick != reloaded.tick {
        keys.push("tick");
    }
    if running.metrics_addr != reloaded.metrics_addr {
        keys.push("metrics_addr");
    }
    if running.status_socket != reloaded.status_socket {
        keys.push("status_socket");
    }
    if running.status_group != reloaded.status_group {
        keys.push("status_group");
    }
    if running.seed != reloaded.seed {
        keys.push("seed");
    }
    if running.netns != reloaded.netns {
        keys.push("netns");
    }
    if running.journal_dir != reloaded.journal_dir {
        keys.push("journal_dir");
    }
    keys
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_config_others_may_write_is_refused_saying_how_to_fix_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("governor-strict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.toml");
        std::fs::write(&file, DESIGN_EXAMPLE).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(Some(&file)).is_ok(), "a 0644 file of ours loads");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = load(Some(&file)).expect_err("a world-writable config is refused");
        let text = err.to_string();
        assert!(
            text.contains("writable by its group or by everyone (mode 666)"),
            "{text}"
        );
        assert!(text.contains("chmod go-w"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn agent_keys_a_reload_cannot_apply_are_named() {
        let run = governor_engine::config::AgentConfig::default();
        let mut new = run.clone();
        new.dry_run = !run.dry_run;
        assert!(
            needs_restart(&run, &new).is_empty(),
            "dry_run is applied at reload"
        );
        new.tick = run.tick * 2;
        new.journal_dir = "/elsewhere".into();
        assert_eq!(needs_restart(&run, &new), ["tick", "journal_dir"]);
    }

    /// The example of `design.md`, "Config", shared with the engine's tests.
    const DESIGN_EXAMPLE: &str =
        include_str!("../../../governor-engine/testdata/design-example.toml");

    #[test]
    fn check_command_prints_a_summary_or_every_error() {
        let dir = std::env::temp_dir().join(format!("governor-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, DESIGN_EXAMPLE).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(check_command(Some(&good), &mut out, &mut err), 0);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("good.toml: ok: 2 policies, live"), "{out}");
        assert!(out.contains("shed-on-accept-queue (dry-run)"), "{out}");

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[agent]\ndry_run = \"yes\"\ntick = 1\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(check_command(Some(&bad), &mut out, &mut err), 2);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains("bad.toml:2:11: error: `dry_run` in [agent]: expected true or false"),
            "{err}"
        );
        assert!(
            err.contains("bad.toml:3:8: error: `tick` in [agent]: duration 1 has no unit"),
            "{err}"
        );
        assert!(err.contains("2 errors found"), "{err}");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            check_command(Some(&dir.join("absent.toml")), &mut out, &mut err),
            2
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
