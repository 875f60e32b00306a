//! Checks of the systemd unit: what its `SystemCallFilter=` lines let the
//! agent call (systemd's own merge rules, groups expanded by
//! `systemd-analyze syscall-filter`), `systemd-analyze verify`, and the
//! exposure score of `systemd-analyze security --offline=true` (at most 2.5).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail};

/// Highest exposure score accepted.
pub const MAX_EXPOSURE: f64 = 2.5;

/// Where the unit (and the .deb) has the binary; the check points it at a build.
pub const UNIT_BINARY: &str = "/usr/bin/governor";

/// System calls the agent cannot work without, and why.
const MUST_ALLOW: &[(&str, &str)] = &[
    ("bpf", "it loads the programs and creates the maps"),
    ("perf_event_open", "it attaches the tracepoint probes"),
    (
        "setrlimit",
        "aya raises RLIMIT_MEMLOCK with it on kernels before 5.11",
    ),
    ("prlimit64", "glibc's setrlimit() is this call"),
    ("setns", "agent.netns (another network namespace) needs it"),
];

/// A sample of the privileged calls that must stay denied: the filter may
/// open what the agent needs, not the groups those calls came from.
const MUST_DENY: &[&str] = &[
    "ptrace",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "reboot",
    "kexec_load",
    "init_module",
    "delete_module",
    "swapon",
    "settimeofday",
    "clock_adjtime",
    "setuid",
    "capset",
    "acct",
    "ioperm",
    "iopl",
    "open_by_handle_at",
    "fanotify_init",
    "quotactl",
    "setpriority",
    "sched_setattr",
];

/// Checks the unit's system call filter, then verifies the unit (with its
/// binary path pointed at `binary`) and returns its exposure score.
pub fn check(root: &Path, binary: &Path) -> anyhow::Result<f64> {
    let dir = root.join("target/systemd-check");
    fs::create_dir_all(&dir)?;
    let unit = fs::read_to_string(root.join("systemd/governor.service"))
        .context("reading systemd/governor.service")?;
    let summary = check_syscall_filter(&unit, &mut Groups::default())
        .context("systemd/governor.service: SystemCallFilter=")?;
    eprintln!("  {summary}");
    let unit = unit.replace(UNIT_BINARY, &binary.display().to_string());
    fs::write(dir.join("governor.service"), unit)?;
    fs::copy(
        root.join("systemd/governor.slice"),
        dir.join("governor.slice"),
    )?;
    // Documentation=man:governor(1): let `verify` find the page we generate.
    let man = dir.join("man");
    let _ = fs::remove_dir_all(&man);
    crate::util::run(
        Command::new(binary)
            .args(["generate", "man", "--dir"])
            .arg(man.join("man1")),
    )
    .context("generating the man pages for `systemd-analyze verify`")?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("governor.service"))
        .arg(dir.join("governor.slice"))
        .env("MANPATH", &man)
        .output()
        .context("running systemd-analyze (package systemd)")?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.join("governor.service"))
        .output()
        .context("running systemd-analyze security")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for governor.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| {
            format!("no exposure level in systemd-analyze security's output:\n{text}")
        })?;
    eprintln!("  systemd-analyze verify: ok; security exposure {score} (must be ≤ {MAX_EXPOSURE})");
    if score > MAX_EXPOSURE {
        bail!("exposure {score} is above {MAX_EXPOSURE}");
    }
    Ok(score)
}

/// Asserts that the unit's `SystemCallFilter=` lines, merged as systemd
/// merges them, allow [`MUST_ALLOW`] and deny [`MUST_DENY`]; returns a
/// one-line summary.
fn check_syscall_filter(unit: &str, groups: &mut dyn Expand) -> anyhow::Result<String> {
    let lines = unit_values(unit, "Service", "SystemCallFilter");
    let filter = Filter::merge(&lines, groups)?;
    let mut errors = Vec::new();
    for (call, why) in MUST_ALLOW {
        if !filter.allows(call) {
            errors.push(format!(
                "`{call}` is denied ({}), but the agent needs it: {why}",
                filter.why(call, &lines)
            ));
        }
    }
    for call in MUST_DENY {
        if filter.allows(call) {
            errors.push(format!(
                "`{call}` is allowed ({}); keep it denied",
                filter.why(call, &lines)
            ));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    let needed: Vec<&str> = MUST_ALLOW.iter().map(|(c, _)| *c).collect();
    Ok(format!(
        "SystemCallFilter: {} ({} lines) allows {}; {} privileged calls checked denied",
        match filter.allow_list {
            Some(true) => format!("allow list of {} calls", filter.set.len()),
            Some(false) => format!("deny list of {} calls", filter.set.len()),
            None => "no filter".into(),
        },
        lines.len(),
        needed.join(" "),
        MUST_DENY.len()
    ))
}

/// The values of `key=` in `[section]` of a unit file, in file order:
/// comments (`#`, `;`) skipped, backslash continuations joined.
fn unit_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut logical = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.starts_with('#') || t.starts_with(';')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        logical.push(std::mem::take(&mut pending));
    }
    if !pending.is_empty() {
        logical.push(pending);
    }
    let mut current = String::new();
    let mut values = Vec::new();
    for line in logical {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            values.push(v.trim().to_string());
        }
    }
    values
}

/// Expands a filter word: `@group` to its system calls (nested groups
/// flattened), anything else to itself.
trait Expand {
    fn expand(&mut self, word: &str) -> anyhow::Result<BTreeSet<String>>;
}

/// Groups as this host's systemd defines them (`systemd-analyze syscall-filter @group`).
#[derive(Default)]
struct Groups {
    /// Direct members of each group asked about so far (calls and `@groups`).
    members: BTreeMap<String, Vec<String>>,
}

impl Groups {
    fn direct(&mut self, group: &str) -> anyhow::Result<Vec<String>> {
        if let Some(m) = self.members.get(group) {
            return Ok(m.clone());
        }
        let out = Command::new("systemd-analyze")
            .args(["syscall-filter", "--no-pager", group])
            .output()
            .context("running systemd-analyze syscall-filter (package systemd)")?;
        if !out.status.success() {
            bail!(
                "systemd-analyze syscall-filter {group}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // "@group", then indented lines: "# description", calls, "@nested".
        let members: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(char::is_whitespace))
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if members.is_empty() {
            bail!("systemd-analyze syscall-filter {group} lists no system calls");
        }
        self.members.insert(group.to_string(), members.clone());
        Ok(members)
    }
}

impl Expand for Groups {
    fn expand(&mut self, word: &str) -> anyhow::Result<BTreeSet<String>> {
        let mut calls = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![word.to_string()];
        while let Some(w) = todo.pop() {
            if !w.starts_with('@') {
                calls.insert(w);
            } else if seen.insert(w.clone()) {
                todo.extend(self.direct(&w)?);
            }
        }
        Ok(calls)
    }
}

/// The filter that systemd builds from a unit's `SystemCallFilter=` lines
/// (src/core/load-fragment.c, config_parse_syscall_filter):
/// - the first line (after an empty one, which resets) decides the kind:
///   without `~` it is an allow list, and `@default` is added to it;
///   with `~` a deny list;
/// - on an allow list, later lines without `~` add, lines with `~` remove;
///   on a deny list, lines with `~` add (deny more), lines without remove;
/// - `name:errno` sets the errno of a denied call; the name is what counts.
///
/// Other settings (PrivateDevices=, ProtectClock=, ProtectKernelModules=,
/// ProtectKernelLogs=, RestrictNamespaces= …) install filters of their own;
/// none of them blocks the calls in [`MUST_ALLOW`] by name (setns and
/// RestrictNamespaces= aside, which filters setns by namespace type).
#[derive(Debug, Default)]
struct Filter {
    /// `None`: no filter; `Some(true)`: allow list; `Some(false)`: deny list.
    allow_list: Option<bool>,
    set: BTreeSet<String>,
    /// The line (index into the values) and word that last put each call in
    /// or took it out of `set`.
    last: BTreeMap<String, (usize, String)>,
}

impl Filter {
    fn merge(lines: &[String], groups: &mut dyn Expand) -> anyhow::Result<Self> {
        let mut f = Self::default();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                f = Self::default();
                continue;
            }
            let (invert, words) = match line.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let allow_list = match f.allow_list {
                Some(a) => a,
                None => {
                    f.allow_list = Some(!invert);
                    if !invert {
                        for c in groups.expand("@default")? {
                            f.last.insert(c.clone(), (i, "@default (implicit)".into()));
                            f.set.insert(c);
                        }
                    }
                    !invert
                }
            };
            // Allow list: plain adds, `~` removes. Deny list: `~` adds, plain removes.
            let add = allow_list != invert;
            for word in words.split_whitespace() {
                let name = word.split_once(':').map_or(word, |(n, _)| n);
                for c in groups.expand(name)? {
                    f.last.insert(c.clone(), (i, word.to_string()));
                    if add {
                        f.set.insert(c);
                    } else {
                        f.set.remove(&c);
                    }
                }
            }
        }
        Ok(f)
    }

    fn allows(&self, call: &str) -> bool {
        match self.allow_list {
            None => true,
            Some(true) => self.set.contains(call),
            Some(false) => !self.set.contains(call),
        }
    }

    /// Which line decided `call`, for messages.
    fn why(&self, call: &str, lines: &[String]) -> String {
        match (self.last.get(call), self.allow_list) {
            (_, None) => "no SystemCallFilter= line".into(),
            (Some((i, word)), _) => format!(
                "line {} `SystemCallFilter={}`, by `{word}`",
                i + 1,
                lines[*i]
            ),
            (None, Some(true)) => "not on the allow list".into(),
            (None, Some(false)) => "not on the deny list".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few groups, shaped like systemd's.
    struct Fake;

    impl Expand for Fake {
        fn expand(&mut self, word: &str) -> anyhow::Result<BTreeSet<String>> {
            let calls: &[&str] = match word {
                "@default" => &["execve", "prlimit64"],
                "@system-service" => &["read", "write", "setrlimit", "execve", "prlimit64"],
                "@privileged" => &["bpf", "chroot", "setuid"],
                "@resources" => &["setrlimit", "setpriority"],
                "@debug" => &["perf_event_open", "ptrace"],
                w if w.starts_with('@') => bail!("unknown group {w}"),
                w => return Ok(BTreeSet::from([w.to_string()])),
            };
            Ok(calls.iter().map(|c| c.to_string()).collect())
        }
    }

    fn filter(lines: &[&str]) -> Filter {
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        Filter::merge(&lines, &mut Fake).unwrap()
    }

    #[test]
    fn later_deny_line_removes_from_the_allow_list() {
        let f = filter(&[
            "@system-service bpf perf_event_open",
            "~@privileged @resources @debug",
        ]);
        for c in ["bpf", "perf_event_open", "setrlimit", "ptrace", "chroot"] {
            assert!(!f.allows(c), "{c}");
        }
        // @default is implied by an allow list, and ~@resources does not name prlimit64.
        assert!(f.allows("prlimit64") && f.allows("read"));
    }

    #[test]
    fn a_later_allow_line_puts_calls_back() {
        let f = filter(&[
            "@system-service",
            "~@privileged @resources @debug",
            "bpf perf_event_open setrlimit",
        ]);
        for c in ["bpf", "perf_event_open", "setrlimit", "prlimit64"] {
            assert!(f.allows(c), "{c}");
        }
        for c in ["ptrace", "chroot", "setuid", "setpriority", "mount"] {
            assert!(!f.allows(c), "{c}");
        }
    }

    #[test]
    fn deny_lists_and_resets() {
        let f = filter(&["~@debug:EPERM", "perf_event_open"]);
        assert!(f.allows("perf_event_open") && f.allows("mount") && !f.allows("ptrace"));
        let f = filter(&["read", "", "~@privileged"]);
        assert!(f.allows("write") && !f.allows("bpf"));
        assert!(filter(&[]).allows("bpf"));
    }

    #[test]
    fn values_of_a_key_in_a_section() {
        let unit = "[Unit]\nSystemCallFilter=no\n[Service]\n# SystemCallFilter=comment\n\
                    SystemCallFilter=@system-service \\\n  bpf\nSystemCallFilter = ~@debug\n";
        assert_eq!(
            unit_values(unit, "Service", "SystemCallFilter"),
            ["@system-service  bpf", "~@debug"]
        );
    }

    /// The whole check against a built binary, without the rest of `cargo
    /// xtask test`: `GOVERNOR_BIN=<path> cargo test -p xtask -- --ignored
    /// systemd::tests::check_with_built_binary`.
    #[test]
    #[ignore = "needs a built governor binary in GOVERNOR_BIN"]
    fn check_with_built_binary() {
        let bin = std::env::var_os("GOVERNOR_BIN").expect("GOVERNOR_BIN");
        let score = check(&crate::util::workspace_root(), Path::new(&bin)).unwrap();
        assert!(score <= MAX_EXPOSURE);
    }

    /// The shipped unit, with this host's systemd groups.
    #[test]
    fn shipped_unit_allows_what_the_agent_needs() {
        if Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: no systemd-analyze");
            return;
        }
        let unit =
            fs::read_to_string(crate::util::workspace_root().join("systemd/governor.service"))
                .unwrap();
        match check_syscall_filter(&unit, &mut Groups::default()) {
            Ok(summary) => eprintln!("{summary}"),
            Err(e) => panic!("{e:#}"),
        }
    }
}
