//! The status socket (mode 0600, or 0660 for `agent.status_group`) and what
//! it answers: policies, rungs, recent decisions with their reasons,
//! dry-run, missing signals. Only root, the agent's user and the group's
//! members are answered (SO_PEERCRED); see [`serve_with`].

use std::{
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, net::UnixListener, task::JoinHandle};

use governor_engine::{
    config::{SignalUnit, Watermarks},
    decide::{Change, Decision, PolicyStatus},
    snapshot::{RunqStats, Snapshot},
};

/// Rows of the top-cgroups and ports lists a report carries at most.
pub const TOP_N: usize = 10;

/// One decision as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Seconds since the agent started.
    pub at_s: f64,
    /// Policy.
    pub policy: String,
    /// applied, would, reverted or refused.
    pub kind: String,
    /// The action's name.
    pub action: String,
    /// Rung before → after.
    pub from_rung: usize,
    /// Rung after.
    pub to_rung: usize,
    /// How long the signal had been past the watermark, milliseconds.
    pub held_for_ms: u64,
    /// The signal's value then, in its base unit (µs, ratio, /s, %).
    pub value: Option<f64>,
    /// The whole explanation, as logged.
    pub text: String,
    /// Set if carrying it out failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl DecisionRecord {
    /// From a decision and the outcome of carrying it out.
    pub fn new(d: &Decision, error: Option<String>) -> Self {
        Self {
            at_s: d.at.as_secs_f64(),
            policy: d.policy.clone(),
            kind: d.kind.as_str().to_owned(),
            action: d.action.name().to_owned(),
            from_rung: d.from_rung,
            to_rung: d.to_rung,
            held_for_ms: u64::try_from(d.reason.held_for.as_millis()).unwrap_or(u64::MAX),
            value: d.reason.value.map(|v| v.value),
            text: d.to_string(),
            error,
        }
    }
}

/// A policy as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// Name.
    pub name: String,
    /// Rung now.
    pub rung: usize,
    /// Rungs of its ladder.
    pub rungs: usize,
    /// Only reports.
    pub dry_run: bool,
    /// Last value of its signal, as text with its unit.
    pub value: Option<String>,
    /// Flap budget spent: holding its rung.
    pub flap_held: bool,
    /// No data for its signal.
    pub no_data: bool,
    /// Backoff re-trips counted.
    pub retrips: u32,
    /// Seconds until its next step down, if one is due.
    pub next_step_down_in_s: Option<f64>,
    /// The change the actuators failed to carry out, while it fails: the
    /// rung shown is the one really in force.
    #[serde(default)]
    pub failed: Option<FailedView>,
    /// Why it is not moving, or what it waits for (the engine's
    /// `PolicyStatus::why`), e.g. "under low 300us for 0.2s of 0.5s".
    #[serde(default)]
    pub why: String,
    /// Last value of its signal as a number in its unit's base
    /// (microseconds, fraction or events per second; see `unit`).
    #[serde(default)]
    pub value_base: Option<f64>,
    /// The base unit of `value_base`, `high` and `low`: `us`, `ratio` or
    /// `/s` (empty if the agent does not say).
    #[serde(default)]
    pub unit: String,
    /// Its high watermark (trips), in `unit`.
    #[serde(default)]
    pub high: Option<f64>,
    /// Its low watermark (clears), in `unit`.
    #[serde(default)]
    pub low: Option<f64>,
}

/// The name of a signal unit's base in the report.
pub fn unit_name(unit: SignalUnit) -> &'static str {
    match unit {
        SignalUnit::Latency => "us",
        SignalUnit::Ratio => "ratio",
        SignalUnit::Rate => "/s",
    }
}

/// The unit a report names (the inverse of [`unit_name`]).
pub fn unit_of(name: &str) -> Option<SignalUnit> {
    match name {
        "us" => Some(SignalUnit::Latency),
        "ratio" => Some(SignalUnit::Ratio),
        "/s" => Some(SignalUnit::Rate),
        _ => None,
    }
}

/// A cgroup among those waiting longest on a run queue, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupView {
    /// Path under the cgroup root.
    pub path: String,
    /// Run-queue waits counted in the last interval.
    pub waits: u64,
    /// Median wait, µs.
    pub p50_us: u64,
    /// 99th percentile wait, µs.
    pub p99_us: u64,
    /// Longest wait (histogram bucket bound), µs.
    pub max_us: u64,
    /// Who held the CPU while it waited (watched cgroups; top 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<governor_engine::snapshot::Culprit>,
}

/// A listening port, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    /// TCP port.
    pub port: u16,
    /// Connections waiting to be accepted now.
    pub accept_queue: u32,
    /// The listen backlog.
    pub accept_queue_max: u32,
    /// Connections accepted per second in the last interval.
    pub accepted_per_s: f64,
    /// Accept-queue overflows in the last interval.
    pub overflows: u64,
}

/// A change that failed, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedView {
    /// The rung it was to put in force, or to lift.
    pub rung: usize,
    /// `impose`, `lift` or `adjust`.
    pub change: String,
    /// What the actuator said.
    pub error: String,
    /// Failures in a row.
    pub attempts: u32,
    /// Seconds until it is tried again.
    pub retry_in_s: f64,
}

/// What the status socket answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The config it runs.
    pub config: String,
    /// Global dry-run.
    pub dry_run: bool,
    /// Tick, milliseconds.
    pub tick_ms: u64,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Policies, in config order.
    pub policies: Vec<PolicyView>,
    /// The last decisions, oldest first.
    pub recent: Vec<DecisionRecord>,
    /// Signals that cannot be measured, with the reason.
    pub missing: Vec<String>,
    /// Held values someone else changed (drift), one line per target and
    /// value: policy, target, unit, value held, value found.
    #[serde(default)]
    pub drift: Vec<String>,
    /// Host-wide run-queue waits of the last snapshot.
    #[serde(default)]
    pub host_runq: Option<RunqStats>,
    /// The cgroups waiting longest on a run queue (p99, busiest first), at
    /// most [`TOP_N`].
    #[serde(default)]
    pub top_cgroups: Vec<CgroupView>,
    /// Cgroups in the snapshot besides `top_cgroups`.
    #[serde(default)]
    pub more_cgroups: usize,
    /// Listening ports, longest accept queue first, at most [`TOP_N`].
    #[serde(default)]
    pub ports: Vec<PortView>,
}

impl StatusReport {
    /// Builds the report.
    pub fn new<'a>(
        config: &str,
        dry_run: bool,
        tick: Duration,
        now: Duration,
        policies: &[PolicyStatus],
        recent: impl Iterator<Item = &'a DecisionRecord>,
        missing: &[String],
    ) -> Self {
        Self {
            config: config.to_owned(),
            dry_run,
            tick_ms: u64::try_from(tick.as_millis()).unwrap_or(u64::MAX),
            uptime_s: now.as_secs_f64(),
            policies: policies
                .iter()
                .map(|p| PolicyView {
                    name: p.name.to_string(),
                    rung: p.rung,
                    rungs: p.rungs,
                    dry_run: p.dry_run,
                    value: p.value.map(|v| v.to_string()),
                    flap_held: p.flap_held,
                    no_data: p.no_data,
                    retrips: p.retrips,
                    next_step_down_in_s: p
                        .next_step_down
                        .map(|t| t.saturating_sub(now).as_secs_f64()),
                    failed: p.failed.as_ref().map(|f| FailedView {
                        rung: f.rung,
                        change: match f.change {
                            Change::Impose => "impose",
                            Change::Lift => "lift",
                            Change::Adjust => "adjust",
                        }
                        .to_owned(),
                        error: f.error.clone(),
                        attempts: f.attempts,
                        retry_in_s: f.retry_at.saturating_sub(now).as_secs_f64(),
                    }),
                    why: p.why.clone(),
                    value_base: p.value.map(|v| v.value),
                    unit: p
                        .value
                        .map(|v| unit_name(v.unit).to_owned())
                        .unwrap_or_default(),
                    high: None,
                    low: None,
                })
                .collect(),
            recent: recent.cloned().collect(),
            missing: missing.to_vec(),
            drift: Vec::new(),
            host_runq: None,
            top_cgroups: Vec::new(),
            more_cgroups: 0,
            ports: Vec::new(),
        }
    }

    /// Sets each policy's watermarks (and unit) from `watermarks`, by name.
    pub fn set_watermarks(&mut self, watermarks: &[(String, Watermarks)]) {
        for p in &mut self.policies {
            if let Some((_, w)) = watermarks.iter().find(|(name, _)| *name == p.name) {
                p.high = Some(w.high.value);
                p.low = Some(w.low.value);
                unit_name(w.high.unit).clone_into(&mut p.unit);
            }
        }
    }

    /// Sets the host's waits, the top cgroups and the ports from a snapshot.
    pub fn set_snapshot(&mut self, s: &Snapshot) {
        self.host_runq = s.host.runq;
        let ranked = crate::show::observe::by_runq_p99(&s.cgroups);
        self.more_cgroups = ranked.len().saturating_sub(TOP_N);
        self.top_cgroups = ranked
            .into_iter()
            .take(TOP_N)
            .map(|c| CgroupView {
                path: c.path.to_string(),
                waits: c.runq.count,
                p50_us: c.runq.p50_us,
                p99_us: c.runq.p99_us,
                max_us: c.runq.max_us,
                culprits: c.culprits.clone(),
            })
            .collect();
        self.ports = crate::show::observe::by_accept_queue(&s.ports)
            .into_iter()
            .take(TOP_N)
            .map(|p| PortView {
                port: p.port,
                accept_queue: p.accept_queue,
                accept_queue_max: p.accept_queue_max,
                accepted_per_s: p.accepted_per_s,
                overflows: p.overflows,
            })
            .collect();
    }

    /// As JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// As a table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "governor: {} | {} | tick {}ms | up {:.0}s",
            self.config,
            if self.dry_run {
                "DRY-RUN (nothing is changed)"
            } else {
                "live"
            },
            self.tick_ms,
            self.uptime_s
        );
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>12} {:<8} STATE",
            "POLICY", "RUNG", "VALUE", "MODE"
        );
        for p in &self.policies {
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
            if let Some(f) = &p.failed {
                state.push(format!(
                    "FAILED to {} rung {} ({} in a row, retry in {:.1}s): {}",
                    f.change, f.rung, f.attempts, f.retry_in_s, f.error
                ));
            }
            if let Some(s) = p.next_step_down_in_s {
                state.push(format!("next step down in {s:.1}s"));
            }
            let _ = writeln!(
                out,
                "{:<28} {:>3}/{:<2} {:>12} {:<8} {}",
                p.name,
                p.rung,
                p.rungs,
                p.value.as_deref().unwrap_or("-"),
                if p.dry_run { "dry-run" } else { "live" },
                state.join(", ")
            );
            if !p.why.is_empty() {
                let _ = writeln!(out, "  why: {}", p.why);
            }
        }
        if !self.recent.is_empty() {
            let _ = writeln!(out, "recent decisions:");
            for d in self.recent.iter().rev().take(15) {
                let _ = writeln!(
                    out,
                    "  {:>8.1}s {}{}",
                    d.at_s,
                    d.text,
                    d.error
                        .as_deref()
                        .map(|e| format!("  [FAILED: {e}]"))
                        .unwrap_or_default()
                );
            }
        }
        for m in &self.missing {
            let _ = writeln!(out, "missing: {m}");
        }
        for d in &self.drift {
            let _ = writeln!(out, "DRIFT: {d}");
        }
        out
    }
}

/// What the loop publishes for the status socket. The report is built from
/// it when somebody asks (serialising a thousand policies every tick cost
/// more than deciding them).
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The config it runs.
    pub config: String,
    /// Global dry-run.
    pub dry_run: bool,
    /// The tick.
    pub tick: Duration,
    /// Time since start at the last tick.
    pub now: Duration,
    /// Every policy's state at the last tick.
    pub policies: Arc<Vec<PolicyStatus>>,
    /// The last decisions, oldest first.
    pub recent: Vec<DecisionRecord>,
    /// Signals that cannot be measured, with the reason.
    pub missing: Vec<String>,
    /// Held values someone else changed, one line each.
    pub drift: Vec<String>,
    /// Every policy's watermarks, by name (set at start and on reload).
    pub watermarks: Arc<Vec<(String, Watermarks)>>,
    /// The last snapshot: the report's top cgroups and ports are ranked
    /// from it only when somebody asks.
    pub snapshot: Option<Arc<Snapshot>>,
}

impl Published {
    /// The report of what was published.
    pub fn report(&self) -> StatusReport {
        let mut report = StatusReport::new(
            &self.config,
            self.dry_run,
            self.tick,
            self.now,
            &self.policies,
            self.recent.iter(),
            &self.missing,
        );
        report.drift.clone_from(&self.drift);
        report.set_watermarks(&self.watermarks);
        if let Some(s) = &self.snapshot {
            report.set_snapshot(s);
        }
        report
    }
}

/// Every policy's watermarks, by name, for [`Published::watermarks`].
pub fn watermarks_of(cfg: &governor_engine::config::Config) -> Arc<Vec<(String, Watermarks)>> {
    Arc::new(
        cfg.policies
            .iter()
            .map(|p| (p.name.clone(), p.watermarks))
            .collect(),
    )
}

/// How the status socket serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A group (name or gid) whose members may read the status besides root
    /// (`agent.status_group`): the socket is then mode 0660 and owned by
    /// it. `None`: root only, mode 0600.
    pub group: Option<String>,
    /// Clients served at once; the others wait in the listen backlog.
    pub max_clients: usize,
    /// How long a client may take nothing of its reply before it is
    /// dropped (and ten times that is as long as it may take in all).
    pub write_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            group: None,
            max_clients: MAX_CLIENTS,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

impl ServeOptions {
    /// The options an agent's config asks for.
    pub fn for_agent(agent: &governor_engine::config::AgentConfig) -> Self {
        Self {
            group: agent.status_group.clone(),
            ..Self::default()
        }
    }
}

/// Clients served at once by default.
const MAX_CLIENTS: usize = 128;
/// How long a client may read nothing of its reply, by default.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The listen backlog: clients past [`MAX_CLIENTS`] wait here.
const BACKLOG: i32 = 1024;
/// The first pause after a failed accept; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the report of `published` on a unix socket at `path`, for root
/// only (mode 0600): [`serve_with`] with the default options.
pub fn serve(path: &Path, published: Arc<Mutex<Published>>) -> anyhow::Result<JoinHandle<()>> {
    serve_with(path, published, &ServeOptions::default())
}

/// Serves the report of `published` on a unix socket at `path`: each
/// connection gets the latest JSON and is closed. Must be called inside a
/// tokio runtime.
///
/// The socket never replaces anything but a stale socket (one nobody
/// answers on) and is never reached through a symlink; it is bound in a
/// private directory and moved into place with its final mode, so it is
/// never reachable with a looser one. Peers are checked (SO_PEERCRED): root,
/// the agent's own user and members of `options.group` are answered, others
/// get one line of refusal. Each client is served by a task of its own, at
/// most `options.max_clients` at once, and dropped if it takes nothing of
/// its reply for `options.write_timeout`; the report is rendered once per
/// change of `published`, and the lock on `published` is held only to
/// compare and copy it. All of it runs on a thread of its own, never on the caller's
/// runtime; aborting (or dropping) the task returned stops that thread,
/// which removes the socket if it is still the one bound.
pub fn serve_with(
    path: &Path,
    published: Arc<Mutex<Published>>,
    options: &ServeOptions,
) -> anyhow::Result<JoinHandle<()>> {
    let group = match &options.group {
        None => None,
        Some(g) => Some((g.clone(), resolve_group(g)?)),
    };
    let (listener, file) = bind(path, group.as_ref().map(|(_, gid)| *gid))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("status socket {}", path.display()))?;
    let server = Arc::new(Server {
        published,
        cache: tokio::sync::Mutex::new(None),
        group,
        // SAFETY: geteuid has no preconditions and cannot fail.
        own_uid: unsafe { libc::geteuid() },
        write_timeout: options.write_timeout,
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(options.max_clients.max(1)));
    // The clients are served on a thread and runtime of their own: however
    // many there are, they take one core at most and never a worker of the
    // agent's runtime. The task returned only holds the thread's stop: the
    // thread ends (and removes the socket) when it is aborted or dropped.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
        .context("starting the status socket's runtime")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("status socket {}: {e}", file.path.display());
                        return;
                    }
                };
                tokio::select! {
                    () = accept_loop(listener, server, limit, &file) => {}
                    _ = stopped => {}
                }
                drop(file);
            });
        })
        .context("starting the status socket's thread")?;
    Ok(tokio::spawn(async move {
        let _stop = stop;
        std::future::pending::<()>().await;
    }))
}

/// Accepts until aborted; every client in a task of its own.
async fn accept_loop(
    listener: UnixListener,
    server: Arc<Server>,
    limit: Arc<tokio::sync::Semaphore>,
    file: &SocketFile,
) {
    let mut failed = 0u64;
    let mut pause = BACKOFF_MIN;
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((conn, _)) => {
                if failed > 0 {
                    tracing::info!(
                        "status socket {}: accepting again after {failed} failed accepts",
                        file.path.display()
                    );
                    failed = 0;
                    pause = BACKOFF_MIN;
                }
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    server.answer(conn).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and its kin: the connection stays queued and the
                // next accept would fail at once. Back off, say so once.
                if failed == 0 {
                    tracing::warn!(
                        "status socket {}: accept failed: {e}; retrying with backoff (not logged again until it recovers)",
                        file.path.display()
                    );
                }
                failed += 1;
                drop(permit);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// What every client's task shares.
struct Server {
    published: Arc<Mutex<Published>>,
    /// The last rendering and what it was rendered from; one rendering at a
    /// time, the clients that ask meanwhile wait for it.
    cache: tokio::sync::Mutex<Option<(Published, Arc<[u8]>)>>,
    /// The group allowed besides root: its name (for the refusal) and gid.
    group: Option<(String, u32)>,
    own_uid: u32,
    write_timeout: Duration,
}

impl Server {
    async fn answer(&self, mut conn: tokio::net::UnixStream) {
        let reply = match self.allowed(&conn) {
            Ok(()) => self.json().await,
            Err(refusal) => {
                tracing::debug!("status socket: {}", refusal.trim_end());
                Arc::from(refusal.into_bytes())
            }
        };
        // A client that takes nothing for `write_timeout` is dropped, and so
        // is one that trickles for ten times that.
        let _ = tokio::time::timeout(10 * self.write_timeout, async {
            let mut left = &reply[..];
            while !left.is_empty() {
                match tokio::time::timeout(self.write_timeout, conn.write(left)).await {
                    Ok(Ok(n)) if n > 0 => left = &left[n..],
                    _ => return,
                }
                // One buffer's worth per turn: a fast reader does not keep
                // its worker from the runtime's other tasks.
                tokio::task::yield_now().await;
            }
            let _ = tokio::time::timeout(self.write_timeout, conn.shutdown()).await;
        })
        .await;
    }

    /// Ok if the peer may read the status, else the line that says why not.
    fn allowed(&self, conn: &tokio::net::UnixStream) -> Result<(), String> {
        use std::os::fd::AsRawFd as _;
        let cred = conn
            .peer_cred()
            .map_err(|e| format!("refused: the peer's credentials are unknown ({e})\n"))?;
        let uid = cred.uid();
        if uid == 0 || uid == self.own_uid {
            return Ok(());
        }
        if let Some((_, gid)) = &self.group
            && (cred.gid() == *gid
                || peer_groups(conn.as_raw_fd()).is_ok_and(|groups| groups.contains(gid)))
        {
            return Ok(());
        }
        Err(match &self.group {
            None => format!("refused: uid {uid} may not read the governor's status (root only)\n"),
            Some((name, gid)) => format!(
                "refused: uid {uid} may not read the governor's status (root and members of group {name}, gid {gid}, only)\n"
            ),
        })
    }

    /// The JSON of what is published now: rendered again only if it changed.
    async fn json(&self) -> Arc<[u8]> {
        let mut cache = self.cache.lock().await;
        let now = {
            let p = self
                .published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((from, json)) = &*cache
                && same(from, &p)
            {
                return Arc::clone(json);
            }
            p.clone()
        };
        let render = now.clone();
        let json: Arc<[u8]> =
            match tokio::task::spawn_blocking(move || render.report().to_json()).await {
                Ok(json) => Arc::from(json.into_bytes()),
                Err(_) => return Arc::from(&b""[..]),
            };
        *cache = Some((now, Arc::clone(&json)));
        json
    }
}

/// True if `a` and `b` render the same report (policies compared by
/// identity: the loop publishes a new list every tick).
fn same(a: &Published, b: &Published) -> bool {
    a.now == b.now
        && a.tick == b.tick
        && a.dry_run == b.dry_run
        && Arc::ptr_eq(&a.policies, &b.policies)
        && a.config == b.config
        && a.recent == b.recent
        && a.missing == b.missing
        && a.drift == b.drift
        && Arc::ptr_eq(&a.watermarks, &b.watermarks)
        && match (&a.snapshot, &b.snapshot) {
            (None, None) => true,
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            _ => false,
        }
}

/// The supplementary groups of the peer of `fd` (SO_PEERGROUPS).
fn peer_groups(fd: std::os::fd::RawFd) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * 4).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` is valid for `len` bytes; the kernel writes at
        // most that and sets `len` to what it wrote (or needs).
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / 4;
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// The gid of `group`: a number, or a name looked up in the group database.
fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .with_context(|| format!("status_group {group:?} is not a group name"))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid `group` (null pointers, zero ids).
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated, `buf` valid for its length, and
        // `entry` and `found` are valid out-pointers.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r))
                .with_context(|| format!("looking up status_group {group:?}"));
        }
        if found.is_null() {
            anyhow::bail!(
                "status_group {group:?}: no such group (write an existing group's name or gid, or remove the key)"
            );
        }
        return Ok(entry.gr_gid);
    }
}

/// The socket file this server bound: removed when the server stops, if it
/// is still the same file (device and inode).
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.file_type().is_socket()
            && (m.dev(), m.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A directory only we can enter, next to the socket's place, removed with
/// whatever is left in it.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(beside: &Path) -> anyhow::Result<Self> {
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for n in 0..64u32 {
            let dir = beside.join(format!(".g{:x}", seed.wrapping_add(n)));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", dir.display()));
                }
            }
        }
        anyhow::bail!("cannot create a private directory in {}", beside.display())
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Binds the socket at `path`, with its final mode (0600, or 0660 and
/// owned by `group`) before anyone can reach it.
fn bind(
    path: &Path,
    group: Option<u32>,
) -> anyhow::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        anyhow::bail!("status socket {}: not a file's path", path.display());
    }
    safe_dir(dir)?;
    clear_stale(path)?;

    let private = PrivateDir::new(dir)?;
    let tmp = private.0.join("s");
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .context("creating the status socket")?;
    let addr = socket2::SockAddr::unix(&tmp)
        .with_context(|| format!("status socket {}: path too long?", path.display()))?;
    socket
        .bind(&addr)
        .with_context(|| format!("binding the status socket in {}", private.0.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    if let Some(gid) = group {
        // Under a setgid directory of the group the socket is born its own;
        // else it is given to the group (CAP_CHOWN, or the agent a member).
        let born = std::fs::symlink_metadata(&tmp).map(|m| m.gid());
        if born.ok() != Some(gid) {
            std::os::unix::fs::lchown(&tmp, None, Some(gid)).with_context(|| {
                format!(
                    "giving the status socket {} to status_group (gid {gid}); without CAP_CHOWN \
                     and chown(2) allowed, make {} setgid and of that group (chgrp; chmod g+s)",
                    path.display(),
                    dir.display()
                )
            })?;
        }
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} of the status socket"))?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("listening on the status socket {}", path.display()))?;
    move_into_place(&tmp, path)?;
    let m = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (m.dev(), m.ino()),
    };
    drop(private);
    Ok((socket.into(), file))
}

/// Refuses a directory that someone else could replace the socket in.
fn safe_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let m = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !m.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let mode = m.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        anyhow::bail!(
            "{} is writable by everyone (mode {:o}) and not sticky: anyone could replace the status socket; \
             make it 0755 or choose another status_socket",
            dir.display(),
            mode & 0o7777
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        anyhow::bail!(
            "{} belongs to uid {}, who could replace the status socket; choose a directory of root's",
            dir.display(),
            m.uid()
        );
    }
    Ok(())
}

/// Removes a stale socket at `path`; refuses anything else there.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("status socket {}", path.display())),
        Ok(m) => m,
    };
    let ft = m.file_type();
    if ft.is_symlink() {
        let to = std::fs::read_link(path).map_or_else(|_| "?".into(), |t| t.display().to_string());
        anyhow::bail!(
            "status socket {} is a symlink (to {to}); it is never followed: remove it or choose another status_socket",
            path.display()
        );
    }
    if !ft.is_socket() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else if ft.is_fifo() {
            "a fifo"
        } else {
            "a device"
        };
        anyhow::bail!(
            "status socket {} exists and is not a socket ({kind}); it is left alone: remove it or choose another status_socket",
            path.display()
        );
    }
    // A socket left by a crashed agent is stale; a live agent would answer.
    let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .context("creating a socket")?;
    probe.set_nonblocking(true).context("creating a socket")?;
    let addr = socket2::SockAddr::unix(path)
        .with_context(|| format!("status socket {}: path too long?", path.display()))?;
    match probe.connect(&addr) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        // Connected, in progress, or a full backlog: something listens.
        Ok(()) => anyhow::bail!(
            "another governor (or another program) answers on {}; stop it first",
            path.display()
        ),
        Err(e)
            if e.raw_os_error() == Some(libc::EAGAIN)
                || e.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            anyhow::bail!(
                "another governor (or another program) answers on {}; stop it first",
                path.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("probing the status socket {}", path.display()));
        }
    }
    // Still the socket examined (not something swapped in since)?
    if let Ok(now) = std::fs::symlink_metadata(path)
        && (now.dev(), now.ino()) == (m.dev(), m.ino())
    {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
        Ok(())
    } else {
        anyhow::bail!(
            "status socket {} changed while it was examined",
            path.display()
        )
    }
}

/// Moves `from` to `to`, failing if anything is at `to`.
fn move_into_place(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (cfrom, cto) = (c(from)?, c(to)?);
    // The system call, not libc's wrapper: musl (the static VM test
    // binaries) has no renameat2.
    // SAFETY: NUL-terminated paths, no pointers kept.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let mut e = std::io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        // A filesystem without RENAME_NOREPLACE: a hard link never replaces
        // either; the private name goes with its directory.
        match std::fs::hard_link(from, to) {
            Ok(()) => return Ok(()),
            Err(link) => e = link,
        }
    }
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        anyhow::bail!(
            "status socket {}: something appeared there while the agent started; it is left alone",
            to.display()
        );
    }
    Err(e).with_context(|| format!("moving the status socket to {}", to.display()))
}

/// `governor status`: reads the report from the socket at `path`.
pub fn fetch(path: &Path) -> anyhow::Result<StatusReport> {
    use std::io::Read as _;
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "reading the status needs root, or membership of the agent's status_group"
        } else {
            "is `governor run` running, and are you root?"
        };
        anyhow::Error::new(e).context(format!(
            "cannot reach the agent at {} ({why})",
            path.display()
        ))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if text.starts_with("refused") {
        anyhow::bail!("the agent at {} {}", path.display(), text.trim_end());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the agent answered something that is not a status: {text:?}"))
}

#[cfg(test)]
mod drift_tests {
    #![allow(clippy::unwrap_used)]

    use super::{Published, StatusReport};

    #[test]
    fn drift_is_a_line_of_the_table_and_old_reports_still_parse() {
        let line = "policy p: /system.slice/hog.service (hog.service): held CPUQuota=20%, found systemd has CPUQuota=50%";
        let published = Published {
            drift: vec![line.to_owned()],
            ..Default::default()
        };
        let report = published.report();
        assert!(report.table().contains(&format!("DRIFT: {line}")));
        let back: StatusReport = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back.drift, [line]);
        // An agent before drift reporting answers without the field.
        let mut old: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        old.as_object_mut().unwrap().remove("drift");
        let back: StatusReport = serde_json::from_value(old).unwrap();
        assert!(back.drift.is_empty());
    }

    #[test]
    fn the_report_carries_watermarks_top_cgroups_and_ports_and_old_ones_parse() {
        use governor_engine::{
            config::Protected,
            decide::State,
            snapshot::{CgroupPath, CgroupStats, PortStats, RunqStats, Snapshot},
        };
        let cfg = governor_engine::config::from_str(
            "[agent]\n[[policy]]\nname = \"api\"\n\
             signal = { kind = \"runq_p99\", cgroup = \"/w/api\" }\n\
             high = \"2ms\"\nlow = \"500us\"\n\
             ladder = [{ action = \"cpu_limit\", cgroup = \"/w/batch\", cpus = 0.25 }]\n",
            "t.toml",
        )
        .unwrap();
        let cg = |path: &str, p99_us: u64, count: u64| CgroupStats {
            path: CgroupPath::new(path).unwrap(),
            id: 1,
            runq: RunqStats {
                count,
                p50_us: 1,
                p99_us,
                max_us: p99_us * 2,
            },
            runq_hist: None,
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
            culprits: Vec::new(),
        };
        let port = |port: u16, accept_queue: u32| PortStats {
            port,
            accepted: 0,
            accepted_per_s: 5.0,
            accept_queue,
            accept_queue_max: 128,
            overflows: 0,
        };
        let mut cgroups: Vec<_> = (0..super::TOP_N as u64 + 3)
            .map(|i| cg(&format!("/c{i}"), 10 + i, 1))
            .collect();
        cgroups.push(cg("/busy", 100, 5));
        cgroups.push(cg("/busier", 100, 9));
        cgroups.last_mut().unwrap().culprits = vec![governor_engine::snapshot::Culprit {
            cgroup: "/batch".into(),
            wait_us: 900,
            share: 0.9,
        }];
        let snap = Snapshot {
            cgroups,
            ports: vec![port(80, 1), port(8080, 30), port(22, 0)],
            ..Default::default()
        };
        let published = Published {
            policies: std::sync::Arc::new(
                State::new(&cfg, Protected::for_config(&cfg, None), 1).status(),
            ),
            watermarks: super::watermarks_of(&cfg),
            snapshot: Some(std::sync::Arc::new(snap)),
            ..Default::default()
        };
        let r = published.report();
        let p = &r.policies[0];
        assert_eq!(
            (p.high, p.low, p.unit.as_str()),
            (Some(2000.0), Some(500.0), "us")
        );
        assert_eq!(r.top_cgroups.len(), super::TOP_N);
        assert_eq!(r.more_cgroups, 5);
        // By p99, then by waits: what `observe` shows first.
        assert_eq!(r.top_cgroups[0].path, "/busier");
        assert_eq!(r.top_cgroups[0].culprits[0].cgroup, "/batch");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["top_cgroups"][0]["culprits"][0]["share"], 0.9);
        assert!(json["top_cgroups"][1].get("culprits").is_none());
        assert_eq!(r.top_cgroups[1].path, "/busy");
        assert_eq!(r.top_cgroups[2].path, "/c12");
        let ports: Vec<u16> = r.ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [8080, 80, 22]);
        // An agent before these fields answers without them.
        let mut old: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in ["host_runq", "top_cgroups", "more_cgroups", "ports"] {
            old.as_object_mut().unwrap().remove(key);
        }
        for key in ["value_base", "unit", "high", "low"] {
            old["policies"][0].as_object_mut().unwrap().remove(key);
        }
        let back: StatusReport = serde_json::from_value(old).unwrap();
        assert!(back.top_cgroups.is_empty() && back.ports.is_empty());
        assert_eq!(back.policies[0].high, None);
        assert_eq!(back.policies[0].unit, "");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        io::Read as _,
        os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        path::{Path, PathBuf},
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use governor_engine::{
        config::Protected,
        decide::{PolicyStatus, State},
    };

    use super::{Published, ServeOptions, fetch, serve, serve_with};

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// The statuses of `n` policies, as the engine makes them.
    fn statuses(n: usize) -> Vec<PolicyStatus> {
        use std::fmt::Write as _;
        let mut toml = String::from("[agent]\n");
        for i in 0..n {
            let _ = write!(
                toml,
                "[[policy]]\nname = \"policy-{i:05}-with-a-name-long-enough-to-weigh\"\n\
                 signal = {{ kind = \"runq_p99\", cgroup = \"/workload/api{i}\" }}\n\
                 high = \"2ms\"\nlow = \"1ms\"\n\
                 ladder = [{{ action = \"cpu_limit\", cgroup = \"/workload/batch{i}\", cpus = 0.25 }}]\n"
            );
        }
        let cfg = governor_engine::config::from_str(&toml, "test.toml").unwrap();
        State::new(&cfg, Protected::for_config(&cfg, None), 1).status()
    }

    fn published(policies: usize) -> Arc<Mutex<Published>> {
        Arc::new(Mutex::new(Published {
            config: "test.toml".into(),
            tick: Duration::from_millis(100),
            policies: Arc::new(statuses(policies)),
            ..Default::default()
        }))
    }

    /// A report larger than any socket buffer: a client that does not read
    /// it blocks its writer.
    fn big() -> Arc<Mutex<Published>> {
        published(6000)
    }

    fn json_len(p: &Arc<Mutex<Published>>) -> usize {
        p.lock().unwrap().report().to_json().len()
    }

    fn read_all(path: &Path) -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    }

    /// Runs `f` on a thread whose credentials alone (raw syscalls, not
    /// glibc's process-wide wrappers) are `uid`, `gid` and `groups`: what
    /// the server sees of it through SO_PEERCRED is an unprivileged peer.
    fn as_user<T: Send + 'static>(
        uid: u32,
        gid: u32,
        groups: &[u32],
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let groups = groups.to_vec();
        std::thread::spawn(move || {
            // SAFETY: the raw syscalls change this thread's credentials only;
            // `groups` outlives the call.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
            }
            f()
        })
        .join()
        .unwrap()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_regular_file_at_the_path_is_kept_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = serve(&path, published(1)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("not a socket"), "{text}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_symlink_at_the_path_is_not_followed_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        // Even a symlink to a stale socket: the path is not ours to replace.
        let target = dir.path().join("elsewhere.sock");
        drop(std::os::unix::net::UnixListener::bind(&target).unwrap());
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = serve(&path, published(1)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("symlink"), "{text}");
        assert!(path.symlink_metadata().unwrap().file_type().is_symlink());
        assert!(target.symlink_metadata().unwrap().file_type().is_socket());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_or_fifo_at_the_path_is_kept_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        let text = format!("{:#}", serve(&path, published(1)).unwrap_err());
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(path.join("inside").is_file());

        let fifo = dir.path().join("fifo.sock");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let text = format!("{:#}", serve(&fifo, published(1)).unwrap_err());
        assert!(text.contains(&fifo.display().to_string()), "{text}");
        assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_socket_is_replaced_and_a_live_one_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let first = serve(&path, published(1)).unwrap();
        let text = tokio::task::spawn_blocking({
            let path = path.clone();
            move || read_all(&path)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(text.starts_with('{'), "{text}");
        let err = format!("{:#}", serve(&path, published(1)).unwrap_err());
        assert!(err.contains("answers on"), "{err}");
        assert!(path.symlink_metadata().unwrap().file_type().is_socket());
        first.abort();
    }

    /// inotify events on `dir` as (mask, name).
    fn inotify_events(fd: i32) -> Vec<(u32, String)> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let n = usize::try_from(n).unwrap_or(0);
        let mut out = Vec::new();
        let mut at = 0;
        let head = std::mem::size_of::<libc::inotify_event>();
        while at + head <= n {
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = &buf[at + head..at + head + len];
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_owned();
            out.push((mask, name));
            at += head + len;
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_socket_is_0600_from_the_moment_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("run");
        let path = sub.join("governor.sock");
        std::fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o755);
        // SAFETY: plain syscalls on a valid NUL-terminated path.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let c = std::ffi::CString::new(sub.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: as above.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd,
                c.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ATTRIB,
            )
        };
        assert!(wd >= 0);
        let task = serve(&path, published(1)).unwrap();
        let events = inotify_events(fd);
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        let ours: Vec<u32> = events
            .iter()
            .filter(|(_, n)| n == "governor.sock")
            .map(|(m, _)| *m)
            .collect();
        assert!(
            ours.iter()
                .any(|m| m & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0),
            "{events:?}"
        );
        // A chmod after the socket appeared means it was reachable before.
        assert!(
            ours.iter().all(|m| m & libc::IN_ATTRIB == 0),
            "the socket's mode changed after it appeared: {events:?}"
        );
        let meta = path.symlink_metadata().unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        // SAFETY: geteuid has no preconditions.
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
        assert_eq!(sub.metadata().unwrap().mode() & 0o022, 0);
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_it_makes_is_not_writable_by_others_and_a_writable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/governor.sock");
        let task = serve(&path, published(1)).unwrap();
        for d in [dir.path().join("a"), dir.path().join("a/b")] {
            assert_eq!(d.metadata().unwrap().mode() & 0o022, 0, "{}", d.display());
        }
        task.abort();

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let path = open.join("governor.sock");
        let text = format!("{:#}", serve(&path, published(1)).unwrap_err());
        assert!(text.contains(&open.display().to_string()), "{text}");
        assert!(text.contains("writable"), "{text}");
        assert!(path.symlink_metadata().is_err());

        // Sticky, like /tmp: nobody else can remove or rename the socket.
        chmod(&open, 0o1777);
        let task = serve(&path, published(1)).unwrap();
        task.abort();
    }

    /// The child half of [`accept_errors_back_off_and_are_logged_once`]:
    /// runs only when that test starts it.
    #[test]
    fn emfile_child() {
        let Some(dir) = std::env::var_os("GOVERNOR_STATUS_EMFILE_CHILD") else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
        let path = PathBuf::from(dir).join("governor.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _task = serve(&path, published(1)).unwrap();
            let client =
                socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            let lim = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 4096,
            };
            // SAFETY: a valid rlimit.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
            let mut hogs = Vec::new();
            loop {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => hogs.push(f),
                    Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            // Connecting needs no new descriptor; accepting it does.
            client
                .connect(&socket2::SockAddr::unix(&path).unwrap())
                .unwrap();
            let cpu = || {
                // SAFETY: a valid out-pointer.
                let mut u: libc::rusage = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
                let t = |v: libc::timeval| v.tv_sec as f64 * 1e3 + v.tv_usec as f64 / 1e3;
                t(u.ru_utime) + t(u.ru_stime)
            };
            let cpu0 = cpu();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let busy_ms = cpu() - cpu0;
            drop(hogs);
            let t0 = Instant::now();
            client.set_nonblocking(true).unwrap();
            let std: std::os::unix::net::UnixStream = client.into();
            let mut s = tokio::net::UnixStream::from_std(std).unwrap();
            let mut text = Vec::new();
            let served = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut text),
            )
            .await
            .is_ok_and(|r| r.is_ok())
                && text.starts_with(b"{");
            println!(
                "EMFILE-CHILD busy_ms={busy_ms:.0} served={served} after_ms={}",
                t0.elapsed().as_millis()
            );
        });
    }

    #[test]
    fn accept_errors_back_off_and_are_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "show::status::tests::emfile_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("GOVERNOR_STATUS_EMFILE_CHILD", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stdout
            .lines()
            .find_map(|l| l.find("EMFILE-CHILD").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("no result from the child:\n{stdout}\n{stderr}"));
        eprintln!("{line}");
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        let busy_ms: f64 = field("busy_ms=").parse().unwrap();
        assert!(
            busy_ms < 200.0,
            "1 s of EMFILE cost {busy_ms:.0} ms of CPU: the accept loop spins\n{stderr}"
        );
        assert_eq!(field("served="), "true", "{stderr}");
        let warned = stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("accept"))
            .count();
        assert_eq!(warned, 1, "one warning per episode:\n{stderr}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_stalls_nobody_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        let p = big();
        let full = json_len(&p);
        assert!(full > 1_000_000, "{full}");
        let task = serve(&path, Arc::clone(&p)).unwrap();
        let mut staller = std::os::unix::net::UnixStream::connect(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        let report = tokio::task::spawn_blocking({
            let path = path.clone();
            move || fetch(&path)
        })
        .await
        .unwrap();
        let report = report.unwrap();
        assert_eq!(report.policies.len(), 6000);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        // The server gave up on it: what it reads now is cut short.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = tokio::task::spawn_blocking(move || {
            staller
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = Vec::new();
            staller.read_to_end(&mut buf).map(|_| buf.len())
        })
        .await
        .unwrap()
        .unwrap();
        assert!(got < full, "a stalled client got all {got} bytes");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_is_not_root_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root (to be root and someone else)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let path = dir.path().join("governor.sock");
        let task = serve(&path, published(2)).unwrap();
        // Let everyone reach the socket: what refuses is the server.
        chmod(&path, 0o666);
        let root = tokio::task::spawn_blocking({
            let path = path.clone();
            move || fetch(&path)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(root.policies.len(), 2);
        let p = path.clone();
        let raw =
            tokio::task::spawn_blocking(move || as_user(65534, 65534, &[], move || read_all(&p)))
                .await
                .unwrap()
                .unwrap();
        assert!(raw.starts_with("refused"), "{raw}");
        assert_eq!(raw.trim_end().lines().count(), 1, "{raw}");
        let p = path.clone();
        let err =
            tokio::task::spawn_blocking(move || as_user(65534, 65534, &[], move || fetch(&p)))
                .await
                .unwrap()
                .unwrap_err();
        assert!(format!("{err:#}").contains("refused"), "{err:#}");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_of_the_status_group_are_served_and_others_refused() {
        if !is_root() {
            eprintln!("skipped: needs root (to be root and someone else)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let path = dir.path().join("governor.sock");
        let options = ServeOptions {
            group: Some("65534".into()),
            ..ServeOptions::default()
        };
        let task = serve_with(&path, published(2), &options).unwrap();
        let meta = path.symlink_metadata().unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o660);
        assert_eq!(meta.gid(), 65534);
        let ask = |uid: u32, gid: u32, groups: &'static [u32]| {
            let p = path.clone();
            tokio::task::spawn_blocking(move || as_user(uid, gid, groups, move || fetch(&p)))
        };
        // Its primary group, or a supplementary one.
        assert_eq!(
            ask(65534, 65534, &[])
                .await
                .unwrap()
                .unwrap()
                .policies
                .len(),
            2
        );
        assert_eq!(
            ask(65533, 12345, &[65534])
                .await
                .unwrap()
                .unwrap()
                .policies
                .len(),
            2
        );
        // Neither: the socket's mode keeps it out...
        let err = format!("{:#}", ask(65533, 12345, &[]).await.unwrap().unwrap_err());
        assert!(err.contains("status_group"), "{err}");
        // ...and past a mode made too loose, the server does.
        chmod(&path, 0o666);
        let err = format!("{:#}", ask(65533, 12345, &[]).await.unwrap().unwrap_err());
        assert!(
            err.contains("refused") && err.contains("gid 65534"),
            "{err}"
        );
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_status_group_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        let options = ServeOptions {
            group: Some("no-such-group-governor-test".into()),
            ..ServeOptions::default()
        };
        let err = format!(
            "{:#}",
            serve_with(&path, published(1), &options).unwrap_err()
        );
        assert!(err.contains("no-such-group-governor-test"), "{err}");
        assert!(path.symlink_metadata().is_err());
    }

    #[test]
    fn status_group_is_read_from_the_config() {
        use governor_engine::config::from_str;
        let cfg = |v: &str| from_str(&format!("[agent]\nstatus_group = {v}\n"), "t.toml");
        let group = |v: &str| ServeOptions::for_agent(&cfg(v).unwrap().agent).group;
        assert_eq!(group("\"adm\""), Some("adm".into()));
        assert_eq!(group("65534"), Some("65534".into()));
        assert_eq!(
            ServeOptions::for_agent(&from_str("[agent]\n", "t").unwrap().agent).group,
            None
        );
        for bad in ["\"\"", "\"a b\"", "-1", "true"] {
            let err = cfg(bad).unwrap_err().to_string();
            assert!(err.contains("status_group"), "{bad}: {err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_cap_clients_wait_for_a_slot_and_a_staller_frees_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        let options = ServeOptions {
            max_clients: 1,
            write_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        };
        let task = serve_with(&path, big(), &options).unwrap();
        let _staller = std::os::unix::net::UnixStream::connect(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        let p = path.clone();
        let report = tokio::task::spawn_blocking(move || fetch(&p))
            .await
            .unwrap()
            .unwrap();
        let waited = t0.elapsed();
        assert_eq!(report.policies.len(), 6000);
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_published_is_what_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        let p = published(3);
        let task = serve(&path, Arc::clone(&p)).unwrap();
        let get = || {
            let path = path.clone();
            async move {
                tokio::task::spawn_blocking(move || fetch(&path))
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        assert_eq!(get().await.config, "test.toml");
        // A reload changes the config and nothing else: answered at once.
        p.lock().unwrap().config = "reloaded.toml".into();
        assert_eq!(get().await.config, "reloaded.toml");
        p.lock().unwrap().now = Duration::from_secs(7);
        assert_eq!(get().await.uptime_s, 7.0);
        p.lock().unwrap().drift = vec!["d".into()];
        assert_eq!(get().await.drift, ["d"]);
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_removes_its_own_socket_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor.sock");
        let task = serve(&path, published(1)).unwrap();
        task.abort();
        let _ = task.await;
        let t0 = Instant::now();
        while path.symlink_metadata().is_ok() && t0.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(path.symlink_metadata().is_err(), "the socket is removed");
        // Its thread is gone with it: nothing answers, and the path is free.
        let task = serve(&path, published(1)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        task.abort();
        let _ = task.await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
