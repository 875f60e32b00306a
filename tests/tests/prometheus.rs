//! A real Prometheus (Debian's `prometheus`, installed by `cargo xtask
//! setup`) scraping a running `governor run`, with the shipped alert rules
//! loaded: the agent's `/metrics` passes `promtool check metrics`; the
//! run-queue histogram's p99 from PromQL is the agent's own p99 for the same
//! window, to the histogram's bucket edges; every query of the shipped
//! Grafana dashboard parses and returns data; the rule group loads healthy.
//!
//! The agent acts only on test-owned things: a dry-run run-queue policy and
//! a dry-run PSI policy on a test cgroup (a worker beside two hogs, so
//! there are waits), and a live throttle, far above the offered rate, on a
//! port of a test-owned network namespace (so the kernel's admission
//! verdicts are counted). Prometheus listens on loopback and is killed by
//! pid on every exit path.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use governor_integration::{
    AgentConfig, AgentProcess, Children, CpuTestCgroup, NetNs, eventually, require_root, scrape,
    skip_unless,
};
use serde_json::Value;

/// The run-queue policy's `window` in seconds: the agent's p99 is over it,
/// and so is the PromQL one it is compared with.
const WINDOW_S: u64 = 5;
/// The port of the throttled listener, inside the test's own namespace.
const PORT: u16 = 18_080;
/// What `$__rate_interval` stands for with a 1 s scrape interval (Grafana:
/// at least four scrape intervals).
const RATE_INTERVAL: &str = "4s";
/// What `$__interval` stands for.
const INTERVAL: &str = "2s";

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(rel)
}

fn on_path(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A private `prometheus`, stopped by pid (SIGTERM, then SIGKILL) when
/// dropped, its TSDB in a temp dir.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it scraping `target` every second and evaluating `rules`
    /// every second; waits until it is ready.
    fn start(target: &str, rules: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: governor\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display()
            ),
        )
        .expect("prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        let p = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(30), || {
            http_get(&p.addr, "/-/ready").is_some_and(|(code, _)| code == 200)
        });
        assert!(
            ready,
            "prometheus did not become ready; log:\n{}",
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        p
    }

    /// `/api/v1/query` at `time` (now if `None`): the `data` of a
    /// successful answer, or the error Prometheus gave.
    fn query(&self, promql: &str, time: Option<f64>) -> Result<Value, String> {
        let mut path = format!("/api/v1/query?query={}", url_encode(promql));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (code, body) = http_get(&self.addr, &path).ok_or("no answer")?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    /// `/api/v1/query_range` from `start` to `end` every `step_s`, as
    /// Grafana runs a panel's query over the dashboard's time range: the
    /// `data` of a successful answer, or the error Prometheus gave.
    fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step_s: u32,
    ) -> Result<Value, String> {
        let path = format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step_s}",
            url_encode(promql)
        );
        let (code, body) = http_get(&self.addr, &path).ok_or("no answer")?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    /// The result vector (or matrix) of `promql` now.
    fn result(&self, promql: &str) -> Vec<Value> {
        self.query(promql, None)
            .unwrap_or_else(|e| panic!("{promql}: {e}"))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = eventually(Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Seconds since the epoch, as Prometheus's API takes times.
fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Percent-encodes a query-string value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` from `addr` over HTTP/1.0: the status code and the body.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// The body of a raw HTTP response (as [`scrape`] returns it).
fn body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `promtool check metrics` on `text`: success and everything it printed.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// A sample's value (`[time, "value"]`) as a number.
fn sample(v: &Value) -> (f64, f64) {
    let t = v[0].as_f64().expect("sample time");
    let x = v[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sample value");
    (t, x)
}

/// Every PromQL query of the dashboard: (where, expr), from each panel's
/// targets (rows' nested panels too), each Prometheus annotation and each
/// query variable.
fn dashboard_queries(board: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for p in board["panels"].as_array().into_iter().flatten() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                format!("panel {:?} {}", p["title"], t["refId"]),
                expr.to_owned(),
            ));
        }
    }
    for a in board["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if a["datasource"]["type"] == "prometheus" {
            let expr = a["expr"].as_str().unwrap_or_default();
            out.push((format!("annotation {:?}", a["name"]), expr.to_owned()));
        }
    }
    for v in board["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or_default();
            out.push((format!("variable {:?}", v["name"]), q.to_owned()));
        }
    }
    out
}

/// Queries of the dashboard that can return data only under conditions
/// this test does not create, with the reason.
const EXCEPTED: &[(&str, &str)] = &[
    (
        "governor_drift{",
        "needs someone else to rewrite a value a live policy holds; the test's cgroup policies are dry-run",
    ),
    (
        "governor_action_errors_total",
        "needs an action that fails; nothing the test asks for fails",
    ),
];

#[test]
fn prometheus_scrapes_the_agent_and_the_dashboard_and_rules_work() {
    require_root();
    skip_unless!(
        !std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm"),
        "the VM guests carry no Prometheus; the host run checks this"
    );
    skip_unless!(
        on_path("prometheus") && on_path("promtool"),
        "prometheus and promtool are not installed (Debian's `prometheus`; `cargo xtask setup` installs it)"
    );
    let load = env!("CARGO_BIN_EXE_govtest-load");

    // A worker waiting behind two hogs on CPU 0, in test cgroups.
    let parent = CpuTestCgroup::new("prom");
    parent.outweigh_the_host();
    let api = parent.child("api");
    let batch = parent.child("batch");
    let mut kids = Children::new(load);
    let (pa, pb) = (api.v2.procs(), batch.v2.procs());
    let (pa, pb) = (pa.to_str().expect("utf-8"), pb.to_str().expect("utf-8"));
    let w = kids.spawn(&["worker", "--cpu", "0", "--seconds", "120", "--join", pa]);
    api.join(kids.procs[w].id());
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", "120", "--join", pb]);
        batch.join(kids.procs[h].id());
    }

    // A listener taking 100/s with a short backlog, offered 200/s, in the
    // test's own network namespace: accepted connections, a queue, overflows.
    let ns = NetNs::new("prm");
    let port = PORT.to_string();
    let mut server = Command::new(load);
    server
        .args(["rrserver", "--port", &port, "--rate", "100"])
        .args(["--seconds", "120", "--backlog", "8"])
        .stdout(Stdio::null());
    kids.procs.push(ns.spawn(server));
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Command::new(load);
    client
        .args(["rrclient", "--addr", &format!("127.0.0.1:{PORT}")])
        .args(["--rate", "200", "--seconds", "110", "--timeout-ms", "300"])
        .stdout(Stdio::null());
    kids.procs.push(ns.spawn(client));

    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let files = AgentConfig::new(dir.path(), metrics_addr.clone(), 3)
        .netns(&ns.path())
        .write(&format!(
            r#"[[policy]]
name = "prom-runq"
dry_run = true
signal = {{ kind = "runq_p99", cgroup = "{api}" }}
window = "{WINDOW_S}s"
high = "1ms"
low = "200us"
for = "500ms"
settle = "1s"
recover_every = "3s"
# Two transitions, three rungs: the third step is refused by the flap
# budget (the dashboard's flap-budget panel has data).
flap_budget = 2
ladder = [
  {{ action = "cpu_weight", cgroup = "{batch}", weight = "idle" }},
  {{ action = "cpu_limit", cgroup = "{batch}", cpus = 0.5 }},
  {{ action = "cpu_limit", cgroup = "{batch}", cpus = 0.2 }},
]

[[policy]]
name = "prom-psi"
dry_run = true
signal = {{ kind = "psi_cpu_some", cgroup = "{api}" }}
high = 0.99
low = 0.5
ladder = [{{ action = "cpu_weight", cgroup = "{batch}", weight = "idle" }}]

[[policy]]
name = "prom-port"
signal = {{ kind = "accepted_rate", port = {PORT} }}
high = "20/s"
low = "5/s"
for = "300ms"
ladder = [{{ action = "throttle_connections", port = {PORT}, rate = "5000/s", burst = 5000, mode = "reset" }}]
"#,
            api = api.v2.path,
            batch = batch.v2.path,
        ));
    let agent = AgentProcess::start(&files.config, &files.socket, &files.log);
    let rules = contrib("prometheus/governor-rules.yml");
    let prom = Prometheus::start(&metrics_addr, &rules);
    let since = now_s();

    // (a) promtool check metrics on the agent's own /metrics.
    let text = scrape(&metrics_addr);
    let text = body(&text);
    assert!(
        text.contains("governor_build_info{"),
        "the agent exports issue 17's metrics (no governor_build_info in /metrics):\n{text}"
    );
    let (ok, printed) = promtool_check_metrics(text);
    println!("promtool check metrics: exit ok {ok}, output {printed:?}");
    assert!(
        ok && printed.trim().is_empty(),
        "promtool check metrics is clean:\n{printed}"
    );

    // A reload (same file), so that the reload counters have a series.
    std::thread::sleep(Duration::from_secs(3));
    agent.signal(libc::SIGHUP);

    // Enough history for windows of WINDOW_S + 1 s behind each of the last
    // samples compared, and for the dashboard's rate intervals.
    let up = eventually(Duration::from_secs(30), || {
        prom.result(r#"up{job="governor"} == 1"#).len() == 1
    });
    assert!(
        up,
        "prometheus scrapes the agent; log:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_secs(WINDOW_S + 10));

    // (b) PromQL's p99 of the cgroup histogram against the agent's own p99
    // (the policy's signal), at the time of each of the last scrapes, over
    // the same window: the waits counted in the scrapes WINDOW_S s apart.
    let cgroup = api.v2.path.to_string();
    let edges: Vec<f64> = {
        let mut e: Vec<f64> = prom
            .result(&format!(
                r#"governor_cgroup_runq_wait_seconds_bucket{{cgroup="{cgroup}"}}"#
            ))
            .iter()
            .filter_map(|s| s["metric"]["le"].as_str()?.parse().ok())
            .filter(|le: &f64| le.is_finite())
            .collect();
        e.sort_by(f64::total_cmp);
        e
    };
    assert!(
        edges.len() > 4,
        "the cgroup {cgroup} has a run-queue histogram with bucket edges: {edges:?}"
    );
    let signal = prom.result(&format!(
        r#"governor_policy_signal{{policy="prom-runq"}}[{}s]"#,
        WINDOW_S + 10
    ));
    let samples: Vec<(f64, f64)> = signal
        .first()
        .and_then(|s| s["values"].as_array())
        .map(|v| v.iter().map(sample).collect())
        .unwrap_or_default();
    assert!(
        samples.len() >= 5,
        "the policy's signal was scraped: {signal:?}"
    );
    let mut mismatches = Vec::new();
    for &(t, agent_p99) in &samples[samples.len() - 5..] {
        let promql = format!(
            r#"histogram_quantile(0.99, rate(governor_cgroup_runq_wait_seconds_bucket{{cgroup="{cgroup}"}}[{}ms]))"#,
            WINDOW_S * 1000 + 500
        );
        let data = prom
            .query(&promql, Some(t))
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        let q = data["result"]
            .get(0)
            .map(|s| sample(&s["value"]).1)
            .unwrap_or(f64::NAN);
        // The exposed bucket (lo, hi] that holds PromQL's p99: it
        // interpolates inside one bucket, so the agent's p99 of the same
        // waits, from the kernel's finer buckets, lies in it too (edges
        // included: a rank that falls on an edge may round either way).
        let i = edges.partition_point(|&e| e < q);
        let lo = if i == 0 { 0.0 } else { edges[i - 1] };
        let hi = edges.get(i).copied().unwrap_or(f64::INFINITY);
        let holds = q.is_finite() && agent_p99 > 0.0 && (lo..=hi).contains(&agent_p99);
        println!(
            "at {t:.3}: PromQL p99 {:.1} µs, agent p99 {:.1} µs, bucket ({:.1}, {:.1}] µs{}",
            q * 1e6,
            agent_p99 * 1e6,
            lo * 1e6,
            hi * 1e6,
            if holds {
                ""
            } else {
                "  <- not the same bucket"
            }
        );
        if !holds {
            mismatches.push(t);
        }
    }
    assert!(
        mismatches.is_empty(),
        "PromQL's p99 and the agent's fall in the same exposed bucket at every compared scrape; not at {mismatches:?}"
    );

    // (c) Every query of the dashboard parses and returns data over the
    // time the agent has been scraped (a range query, as Grafana runs it:
    // the decisions annotation has data where decisions were made).
    if let Some(status) = agent.status() {
        println!("{}", status.table());
    }
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/governor.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let instance = metrics_addr.clone();
    let policies = "prom-runq|prom-psi|prom-port";
    let queries = dashboard_queries(&board);
    assert!(queries.len() > 20, "the dashboard's queries: {queries:?}");
    let mut empty = Vec::new();
    for (place, expr) in &queries {
        assert!(!expr.trim().is_empty(), "{place} has an expr");
        let expr = expr
            .replace("${datasource}", "")
            .replace("$datasource", "")
            .replace("$host", &instance)
            .replace("$policy", policies)
            .replace("$__rate_interval", RATE_INTERVAL)
            .replace("$__interval", INTERVAL);
        // A variable's label_values(METRIC, LABEL): METRIC with that label.
        let (promql, label) = match expr
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        {
            Some((metric, label)) => (metric.trim().to_owned(), Some(label.trim().to_owned())),
            None => (expr.clone(), None),
        };
        let result = match prom.query_range(&promql, since, now_s(), 1) {
            Ok(d) => d["result"].as_array().cloned().unwrap_or_default(),
            Err(e) => panic!("{place}: {promql} does not run: {e}"),
        };
        let has_data = result
            .iter()
            .any(|s| label.as_ref().is_none_or(|l| s["metric"].get(l).is_some()));
        let excepted = EXCEPTED.iter().find(|(needle, _)| promql.contains(needle));
        match (has_data, excepted) {
            (true, _) => println!("data    {place}: {} series", result.len()),
            (false, Some((_, why))) => println!("excepted {place}: no data: {why}"),
            (false, None) => {
                println!("EMPTY   {place}: {promql}");
                empty.push(format!("{place}: {promql}"));
            }
        }
    }

    // (d) The rule group is loaded and every rule evaluates (checked before
    // (c)'s outcome is asserted, so that a failure reports both).
    let mut groups = Value::Null;
    let healthy = eventually(Duration::from_secs(15), || {
        let Some((200, b)) = http_get(&prom.addr, "/api/v1/rules") else {
            return false;
        };
        groups = serde_json::from_str::<Value>(&b).unwrap_or_default()["data"]["groups"].clone();
        groups.as_array().into_iter().flatten().any(|g| {
            g["name"] == "governor"
                && g["rules"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty() && r.iter().all(|rule| rule["health"] == "ok"))
        })
    });
    for g in groups.as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            println!(
                "rule {} {}: health {} {}",
                g["name"], r["name"], r["health"], r["lastError"]
            );
        }
    }
    assert!(
        healthy,
        "the rule group governor is loaded with every rule healthy: {groups}"
    );
    assert!(
        empty.is_empty(),
        "every dashboard query returns data (or is excepted with its reason); empty:\n{}",
        empty.join("\n")
    );
    drop(prom);
    drop(agent);
    drop(kids);
}
