#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

/// The example of `design.md`, "Config" (also used by the agent's `check` test).
const DESIGN_EXAMPLE: &str = include_str!("../../testdata/design-example.toml");

fn cg(s: &str) -> CgroupPath {
    CgroupPath::new(s).unwrap()
}

fn errors_of(src: &str) -> ConfigErrors {
    from_str(src, "test.toml").expect_err("the config should be refused")
}

#[test]
fn the_design_example_loads_with_its_values() {
    let c = from_str(DESIGN_EXAMPLE, "design.toml").unwrap();
    assert_eq!(c.agent.tick, Duration::from_millis(100));
    assert!(!c.agent.dry_run);
    assert_eq!(c.policies.len(), 2);
    let api = &c.policies[0];
    assert_eq!(
        api.signal,
        SignalSpec {
            kind: SignalKind::RunqP99,
            scope: Scope::Cgroup(cg("/workload/api"))
        }
    );
    assert_eq!(api.watermarks.high.value, 2000.0);
    assert_eq!(api.watermarks.low.value, 500.0);
    assert_eq!(api.hold_for, Duration::from_secs(1));
    assert_eq!(api.jitter.get(), 0.3);
    assert_eq!(
        api.ladder.rungs[0],
        Action::CpuWeight {
            cgroup: cg("/workload/batch"),
            weight: CpuWeight::Idle
        }
    );
    assert_eq!(
        api.ladder.rungs[1],
        Action::CpuLimit {
            cgroup: cg("/workload/batch"),
            cpus: Cpus::new(0.25).unwrap()
        }
    );
    assert!(!api.is_dry_run(&c.agent));

    let shed = &c.policies[1];
    assert!(shed.is_dry_run(&c.agent));
    assert_eq!(shed.settle, DEFAULT_SETTLE, "settle defaults");
    assert_eq!(shed.recover_every, DEFAULT_RECOVER_EVERY);
    match &shed.ladder.rungs[0] {
        Action::ThrottleConnections {
            target,
            rate,
            burst,
            mode,
            ..
        } => {
            assert_eq!(*target, Target::Port(8080));
            assert_eq!(rate.as_per_second(), 200.0);
            assert_eq!(*burst, 50);
            assert_eq!(*mode, RejectMode::Reset);
        }
        other => panic!("unexpected rung {other:?}"),
    }
    match &shed.ladder.rungs[1] {
        Action::RejectConnections { exempt, .. } => assert_eq!(exempt[0].to_string(), "10.0.0.0/8"),
        other => panic!("unexpected rung {other:?}"),
    }
}

#[test]
fn a_minimal_policy_gets_every_default() {
    let c = from_str(
        r#"
[[policy]]
name = "p"
signal = { kind = "accepted_rate", port = 80 }
high = "1000/s"
low = "100/s"
ladder = [{ action = "throttle_connections", port = 80, rate = "500/s" }]
"#,
        "t",
    )
    .unwrap();
    assert_eq!(c.agent, AgentConfig::default());
    let p = &c.policies[0];
    assert_eq!(p.hold_for, DEFAULT_FOR);
    assert_eq!(p.flap_budget, FlapBudget::default());
    assert_eq!(p.backoff, Backoff::default());
    assert_eq!(p.dry_run, None);
    match &p.ladder.rungs[0] {
        Action::ThrottleConnections { burst, mode, .. } => {
            assert_eq!(*burst, 500, "burst defaults to one second of rate");
            assert_eq!(*mode, RejectMode::Reset);
        }
        other => panic!("unexpected rung {other:?}"),
    }
}

/// One file with every kind of error the issue lists: all are reported at
/// once, each at its line and column, each with a help line.
#[test]
fn every_error_of_a_file_is_reported_at_its_place() {
    let src = r#"[agent]
tikc = "100ms"

[[policy]]
name = "a"
signal = { kind = "runq_p99", cgroup = "/workload/api" }
high = "2ms"
low = "2ms"
for = 2
ladder = []

[[policy]]
name = "a"
signal = { kind = "accept_queue_fill", port = 70000 }
high = 0.8
low = 0.2
ladder = [{ action = "cpu_limit", cgroup = "/system.slice/ssh.service", cpus = 0.5 }]

[[policy]]
name = "self"
signal = { kind = "runq_p99", cgroup = "/workload/api" }
high = "2ms"
low = "1ms"
ladder = [{ action = "cpu_limit", cgroup = "/workload", cpus = 0.5 }]

[[policy]]
name = "a"
signal = { kind = "accepted_rate", port = 80 }
high = "100/s"
low = "10/s"
ladder = [{ action = "throttle_connections", port = 80, rate = "5/s" }]
"#;
    let e = errors_of(src);
    let text = e.to_string();
    let expect = [
        (
            "test.toml:2:1: error: unknown key `tikc` in [agent]",
            "did you mean `tick`?",
        ),
        (
            "test.toml:8:7: error: in policy \"a\", low (2ms) must be below high (2ms)",
            "lower `low`",
        ),
        (
            "test.toml:9:7: error: `for` in policy \"a\": duration 2 has no unit",
            "\"2ms\"",
        ),
        (
            "test.toml:10:10: error: the ladder of policy \"a\" is empty",
            "add at least one action",
        ),
        (
            "test.toml:13:8: error: policy name \"a\" is already used by policy #1",
            "its own name",
        ),
        (
            "test.toml:14:47: error: `port` in the signal of policy \"a\": port 70000 is out of range",
            "1 to 65535",
        ),
        (
            "test.toml:17:44: error: rung 1 of policy \"a\" acts on a protected target: cgroup /system.slice/ssh.service is protected (sshd)",
            "never acted on",
        ),
        (
            "test.toml:24:44: error: rung 1 of policy \"self\" limits cgroup /workload, which runq_p99 of cgroup /workload/api measures",
            "measure the cgroup",
        ),
        (
            "test.toml:27:8: error: policy name \"a\" is already used by policy #1",
            "its own name",
        ),
    ];
    for (line, help) in expect {
        let at = text
            .find(line)
            .unwrap_or_else(|| panic!("missing {line:?} in:\n{text}"));
        let help_line = text[at..].lines().nth(1).unwrap();
        assert!(
            help_line.starts_with("  help: ") && help_line.contains(help),
            "bad help for {line:?}: {help_line:?}"
        );
    }
    assert_eq!(e.errors.len(), expect.len(), "unexpected errors:\n{text}");
}

#[test]
fn wrong_units_are_named_with_the_right_one() {
    let src = r#"
[[policy]]
name = "p"
signal = { kind = "connect_rate", cgroup = "/c" }
high = "500"
low = "2ms"
jitter = 1.5
ladder = [
  { action = "memory_high", cgroup = "/b", bytes = "512MB" },
  { action = "throttle_connections", cgroup = "/b", rate = "5/s", exempt = ["ten.0.0.0/8"] },
  { action = "cpu_weight", cgroup = "/b", weight = 0 },
  { action = "nice", cgroup = "/b" },
]
"#;
    let text = errors_of(src).to_string();
    for needle in [
        "rate \"500\" has no unit",
        "\"2ms\" is not a rate",
        "ratio 1.5 is outside 0..1",
        "\"MB\" in \"512MB\" is ambiguous",
        "\"ten.0.0.0/8\" is not an address or CIDR",
        "weight 0 is outside 1–10000",
        "unknown action \"nice\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn missing_required_keys_and_bad_scopes() {
    let src = r#"
[[policy]]
signal = { kind = "accept_queue_fill", cgroup = "/a" }
ladder = [{ action = "reject_connections" }]

[[policy]]
name = "q"
signal = { kind = "runq_p42" }
high = "2ms"
low = "1ms"
ladder = [{ action = "cpu_weight", cgroup = "/b", weight = 10, cpus = 1 }]
"#;
    let text = errors_of(src).to_string();
    for needle in [
        "has no `name`",
        "accept_queue_fill is measured on a port",
        "has no `high`",
        "has no `low`",
        "has no target",
        "unknown signal kind \"runq_p42\"",
        "unknown key `cpus` in rung 1 of policy \"q\" (cpu_weight)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn a_syntax_error_is_located() {
    let e = errors_of("[agent]\ntick = \"100ms\n");
    assert_eq!(e.errors.len(), 1);
    assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
}

#[test]
fn the_agent_cgroup_and_protect_list_are_protected() {
    let src = r#"
[agent]
protect = ["/db", 5432]
[[policy]]
name = "p"
signal = { kind = "accepted_rate", port = 80 }
high = "100/s"
low = "10/s"
ladder = [
  { action = "cpu_weight", cgroup = "/db/main", weight = 1 },
  { action = "reject_connections", port = 5432 },
  { action = "cpu_weight", cgroup = "/governor", weight = 1 },
]
"#;
    let opts = LoadOptions {
        agent_cgroup: Some(cg("/governor")),
    };
    let e = from_str_with(src, "t", &opts).unwrap_err();
    assert_eq!(e.errors.len(), 3, "{e}");
    assert!(e.to_string().contains("the agent's own cgroup"), "{e}");
    // Without the agent's cgroup, only the two listed targets are refused.
    assert_eq!(from_str(src, "t").unwrap_err().errors.len(), 2);

    let p = Protected::builtin(None);
    assert!(
        p.covers(&Target::Cgroup(cg("/system.slice"))).is_some(),
        "a parent of sshd is protected"
    );
    assert!(p.covers(&Target::Cgroup(cg("/init.scope/x"))).is_some());
    assert!(p.covers(&Target::Port(22)).is_some());
    assert!(p.covers(&Target::Cgroup(cg("/workload/batch"))).is_none());
}

#[test]
fn shipped_configs_load_and_the_default_is_dry_run() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for file in [
        "examples/fail-fast.toml",
        "examples/jittered-recovery.toml",
        "examples/watermark-quotas.toml",
    ] {
        let path = std::path::PathBuf::from(root).join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let c = from_str(&text, file).unwrap_or_else(|e| panic!("{file}:\n{e}"));
        assert!(!c.policies.is_empty(), "{file} has policies");
    }
    let c = from_str(EMBEDDED_DEFAULT, EMBEDDED_NAME).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.agent.dry_run, "the embedded default must be dry-run");
    assert!(c.policies.iter().all(|p| p.is_dry_run(&c.agent)));
    let protected = Protected::for_config(&c, None);
    for p in &c.policies {
        for a in &p.ladder.rungs {
            assert!(protected.covers(&a.target()).is_none());
        }
    }
}

#[test]
fn a_throttle_rate_may_be_a_share_of_a_ports_accepted_rate_only() {
    let ok = from_str(
        r#"
[[policy]]
name = "p"
signal = { kind = "accept_queue_fill", port = 8080 }
high = 0.5
low = 0.1
ladder = [{ action = "throttle_connections", port = 8080, rate = "95%" }]
"#,
        "test.toml",
    )
    .unwrap();
    match &ok.policies[0].ladder.rungs[0] {
        Action::ThrottleConnections {
            of_accepted, burst, ..
        } => {
            assert_eq!(of_accepted.map(|o| o.share.get()), Some(0.95));
            assert_eq!(*burst, 0, "the default burst is set with the rate");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ok.policies[0].ladder.rungs[0].to_string(),
        "throttle_connections 95% of the accepted rate (reset) on port 8080"
    );
    let text = errors_of(
        r#"
[[policy]]
name = "p"
signal = { kind = "connect_rate", cgroup = "/c" }
high = "50/s"
low = "10/s"
ladder = [
  { action = "throttle_connections", cgroup = "/b", rate = "50%" },
  { action = "throttle_connections", port = 80, rate = "0%" },
  { action = "throttle_connections", port = 81, rate = "150%" },
]
"#,
    )
    .to_string();
    for needle in [
        "test.toml:8:60: error: rate = \"50%\" in rung 1 of policy \"p\" (throttle_connections) is a share of a port's accepted rate, but the target is a cgroup",
        "a rate of 0% admits nothing",
        "rate \"150%\" is not a percentage between 0% and 100%",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn the_run_queue_window_is_an_agent_key_a_policy_may_override() {
    let policy = |extra: &str| {
        format!(
            "[[policy]]\nname = \"p\"\nsignal = {{ kind = \"runq_p99\", cgroup = \"/a\" }}\n\
             high = \"1ms\"\nlow = \"300us\"\n{extra}\n\
             ladder = [{{ action = \"cpu_limit\", cgroup = \"/b\", cpus = 0.2 }}]\n"
        )
    };
    // Default: 1 s, for the agent and so for every policy.
    let c = from_str(&policy(""), "test.toml").unwrap();
    assert_eq!(c.agent.window, DEFAULT_WINDOW);
    assert_eq!(DEFAULT_WINDOW, Duration::from_secs(1));
    assert_eq!(c.policies[0].window, None);
    assert_eq!(c.policies[0].window(&c.agent), Duration::from_secs(1));
    // The agent's, and a policy's own.
    let src = format!("[agent]\nwindow = \"2s\"\n{}", policy(""));
    let c = from_str(&src, "test.toml").unwrap();
    assert_eq!(c.policies[0].window(&c.agent), Duration::from_secs(2));
    let src = format!("[agent]\nwindow = \"2s\"\n{}", policy("window = \"500ms\""));
    let c = from_str(&src, "test.toml").unwrap();
    assert_eq!(c.policies[0].window, Some(Duration::from_millis(500)));
    assert_eq!(c.policies[0].window(&c.agent), Duration::from_millis(500));

    // Refused: 0, past a minute, no unit, and on a signal that is no percentile.
    let text = errors_of(&format!("[agent]\nwindow = \"0s\"\n{}", policy(""))).to_string();
    assert!(
        text.contains("test.toml:2:10: error: `window` in [agent]"),
        "{text}"
    );
    let text = errors_of(&policy("window = \"2m\"")).to_string();
    assert!(text.contains("a window of 2m is longer than 1m"), "{text}");
    let text = errors_of(&policy("window = 5")).to_string();
    assert!(text.contains("duration 5 has no unit"), "{text}");
    let src = "[[policy]]\nname = \"q\"\nsignal = { kind = \"accept_queue_fill\", port = 80 }\n\
               high = 0.8\nlow = 0.2\nwindow = \"1s\"\n\
               ladder = [{ action = \"reject_connections\", port = 80 }]\n";
    let text = errors_of(src).to_string();
    assert!(
        text.contains("test.toml:6:10: error: `window` in policy \"q\" applies to run-queue signals only, not accept_queue_fill"),
        "{text}"
    );
}

#[test]
fn accept_queue_delay_is_a_port_signal_with_durations() {
    let c = from_str(
        r#"
[[policy]]
name = "fail-fast"
signal = { kind = "accept_queue_delay", port = 8080 }
high = "20ms"
low = "2ms"
ladder = [{ action = "throttle_connections", port = 8080, rate = "500/s" }]
"#,
        "t",
    )
    .unwrap();
    let p = &c.policies[0];
    assert_eq!(p.signal.kind, SignalKind::AcceptQueueDelay);
    assert_eq!(p.signal.scope, Scope::Port(8080));
    assert_eq!(p.watermarks.high.value, 20_000.0, "held in microseconds");
    let text = errors_of(
        "[[policy]]\nname = \"d\"\nsignal = { kind = \"accept_queue_delay\", cgroup = \"/a\" }\nhigh = 0.5\nlow = 0.1\nladder = [{ action = \"reject_connections\", port = 80 }]\n",
    )
    .to_string();
    assert!(
        text.contains("accept_queue_delay is measured on a port"),
        "{text}"
    );
    let text = errors_of(
        "[[policy]]\nname = \"d\"\nsignal = { kind = \"accept_queue_delay\", port = 80 }\nhigh = 0.5\nlow = 0.1\nladder = [{ action = \"reject_connections\", port = 80 }]\n",
    )
    .to_string();
    assert!(
        text.contains("duration"),
        "watermarks are durations: {text}"
    );
}

#[test]
fn a_guard_parses_with_defaults_and_its_errors_are_located() {
    use crate::decide::guard::{GuardSpec, MaxQueue};
    let base = r#"
[[policy]]
name = "p"
signal = { kind = "accept_queue_delay", port = 8080 }
high = "50ms"
low = "5ms"
ladder = [{ action = "throttle_connections", port = 8080, rate = "95%" }]
"#;
    let c = from_str(
        &format!("{base}guard = {{ port = 8080, max_queue = 64, max_delay = \"20ms\", mode = \"drop\" }}\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        c.policies[0].guard,
        Some(GuardSpec {
            port: 8080,
            max_queue: MaxQueue::Count(64),
            max_delay: Some(Duration::from_millis(20)),
            min: 4,
            relax_after: Duration::from_secs(5),
            mode: RejectMode::Drop,
        })
    );
    let c = from_str(
        &format!("{base}guard = {{ port = 8080, max_queue = \"25%\" }}\n"),
        "t",
    )
    .unwrap();
    let g = c.policies[0].guard.as_ref().unwrap();
    assert_eq!(g.max_queue, MaxQueue::Share(Ratio::new(0.25).unwrap()));
    assert_eq!(g.max_delay, None);
    assert_eq!(from_str(base, "t").unwrap().policies[0].guard, None);

    let text = errors_of(&format!(
        "{base}guard = {{ prot = 8080, mode = \"rst\" }}\n"
    ))
    .to_string();
    assert!(
        text.contains("test.toml:8:"),
        "located on the guard's line: {text}"
    );
    assert!(
        text.contains("unknown key `prot`") && text.contains("did you mean `port`"),
        "{text}"
    );
    assert!(text.contains("has no `port`"), "{text}");
    assert!(
        text.contains("mode must be \"reset\" or \"drop\""),
        "{text}"
    );
    let text = errors_of(&format!("{base}guard = 8080\n")).to_string();
    assert!(text.contains("`guard` must be a table"), "{text}");
}
