//! Reads a config file into [`Config`], collecting every error with its place.
//!
//! serde stops at the first error, and `governor check` must report them all,
//! so the file is parsed once into a span-preserving document (`toml_edit`)
//! and walked here: every key is checked against the keys its table may
//! have, every value is parsed by its type's `FromStr` (the same parser its
//! serde impl uses), and a bad value only drops the checks that depend on it.

use std::{collections::HashMap, net::SocketAddr, ops::Range, path::PathBuf, time::Duration};

use ipnet::IpNet;
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::{
    Action, AgentConfig, Backoff, Config, ConfigError, CpuWeight, Cpus, FlapBudget, Ladder, Level,
    LoadOptions, OfAccepted, PolicyConfig, Protected, Rate, Ratio, RejectMode, Scope, SignalKind,
    SignalSpec, SignalUnit, Target, Watermarks,
    units::{Bytes, UnitError, parse_duration},
};
use crate::snapshot::CgroupPath;

type Span = Option<Range<usize>>;

const ROOT_KEYS: &[&str] = &["agent", "policy"];
const AGENT_KEYS: &[&str] = &[
    "tick",
    "window",
    "metrics_addr",
    "status_socket",
    "status_group",
    "dry_run",
    "protect",
    "seed",
    "netns",
    "journal_dir",
    "record",
    "record_dir",
    "record_keep",
    "record_max",
];
const POLICY_KEYS: &[&str] = &[
    "name",
    "signal",
    "high",
    "low",
    "for",
    "settle",
    "cooldown",
    "recover_every",
    "jitter",
    "window",
    "dry_run",
    "flap_budget",
    "flap_window",
    "backoff",
    "backoff_max",
    "retrip_within",
    "backoff_reset",
    "ladder",
    "guard",
];
const GUARD_KEYS: &[&str] = &[
    "port",
    "max_queue",
    "max_delay",
    "min",
    "relax_after",
    "mode",
];
const SIGNAL_KEYS: &[&str] = &["kind", "cgroup", "port"];

/// The errors found so far and the text they point into.
struct Cx<'s> {
    src: &'s str,
    errors: Vec<ConfigError>,
}

impl Cx<'_> {
    fn error(&mut self, span: &Span, problem: impl Into<String>, help: impl Into<String>) {
        let at = span.as_ref().map_or(0, |s| s.start);
        self.errors
            .push(ConfigError::at(self.src, at, problem, help));
    }
}

/// A table of the file (`[agent]`, `[[policy]]`, an inline table) with the
/// place to point at when a key is missing, and its name for messages.
struct Table<'a> {
    t: &'a dyn TableLike,
    span: Span,
    what: String,
}

impl<'a> Table<'a> {
    fn from_item(item: &'a Item, what: String) -> Option<Self> {
        match item {
            Item::Table(t) => Some(Self {
                t,
                span: t.span(),
                what,
            }),
            Item::Value(Value::InlineTable(t)) => Some(Self {
                t,
                span: t.span(),
                what,
            }),
            _ => None,
        }
    }

    /// Reports keys this table may not have, suggesting the nearest known one.
    fn unknown_keys(&self, cx: &mut Cx<'_>, known: &[&str]) {
        for (key, _) in self.t.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = self.t.get_key_value(key).and_then(|(k, _)| k.span());
            let help = match nearest(key, known) {
                Some(k) => format!(
                    "did you mean `{k}`? ({} may have: {})",
                    self.what,
                    known.join(", ")
                ),
                None => format!("remove it; {} may have: {}", self.what, known.join(", ")),
            };
            cx.error(&span, format!("unknown key `{key}` in {}", self.what), help);
        }
    }

    fn renamed(&self, what: String) -> Self {
        Self {
            t: self.t,
            span: self.span.clone(),
            what,
        }
    }

    fn get(&self, key: &str) -> Option<(&'a Item, Span)> {
        self.t
            .get_key_value(key)
            .map(|(k, item)| (item, item.span().or_else(|| k.span())))
    }

    /// The value of `key` parsed by `parse`; `Err(())` if it is present but
    /// invalid (the error is recorded), `Ok(None)` if absent.
    fn opt<T>(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        parse: impl FnOnce(&Item) -> Result<T, UnitError>,
    ) -> Result<Option<(T, Span)>, ()> {
        let Some((item, span)) = self.get(key) else {
            return Ok(None);
        };
        match parse(item) {
            Ok(v) => Ok(Some((v, span))),
            Err(e) => {
                cx.error(
                    &span,
                    format!("`{key}` in {}: {}", self.what, e.problem),
                    e.help,
                );
                Err(())
            }
        }
    }

    /// Like [`Table::opt`], with a default when absent.
    fn or<T>(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        default: T,
        parse: impl FnOnce(&Item) -> Result<T, UnitError>,
    ) -> Option<T> {
        match self.opt(cx, key, parse) {
            Ok(Some((v, _))) => Some(v),
            Ok(None) => Some(default),
            Err(()) => None,
        }
    }

    /// A key that must be present.
    fn req<T>(
        &self,
        cx: &mut Cx<'_>,
        key: &str,
        example: &str,
        parse: impl FnOnce(&Item) -> Result<T, UnitError>,
    ) -> Option<(T, Span)> {
        match self.opt(cx, key, parse) {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                cx.error(
                    &self.span,
                    format!("{} has no `{key}`", self.what),
                    format!("add it, e.g. {key} = {example}"),
                );
                None
            }
            Err(()) => None,
        }
    }
}

/// The known key closest to a misspelt one, if any is close.
fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

// --- value parsers: each takes an item and says what it expected ---------

fn found(item: &Item) -> &'static str {
    match item {
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "a table",
        },
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::None => "nothing",
    }
}

fn expected(what: &str, example: &str, item: &Item) -> UnitError {
    UnitError::new(
        format!("expected {what}, found {}", found(item)),
        format!("write e.g. {example}"),
    )
}

fn duration(item: &Item) -> Result<Duration, UnitError> {
    match item {
        Item::Value(Value::String(s)) => parse_duration(s.value()),
        Item::Value(Value::Integer(_) | Value::Float(_)) => {
            let n = item.as_integer().map_or_else(
                || item.as_float().unwrap_or(0.0).to_string(),
                |i| i.to_string(),
            );
            Err(UnitError::new(
                format!("duration {n} has no unit"),
                format!("write it as a string with its unit, e.g. \"{n}ms\" or \"{n}s\""),
            ))
        }
        _ => Err(expected("a duration", "\"2s\"", item)),
    }
}

fn positive_duration(item: &Item) -> Result<Duration, UnitError> {
    let d = duration(item)?;
    if d.is_zero() {
        return Err(UnitError::new(
            "the duration must be longer than 0",
            "write e.g. \"100ms\"",
        ));
    }
    Ok(d)
}

/// A run-queue `window`: longer than 0, at most [`super::MAX_WINDOW`].
fn window(item: &Item) -> Result<Duration, UnitError> {
    let d = positive_duration(item)?;
    if d > super::MAX_WINDOW {
        return Err(UnitError::new(
            format!(
                "a window of {} is longer than {}",
                super::units::format_duration(d),
                super::units::format_duration(super::MAX_WINDOW)
            ),
            "write e.g. window = \"1s\": the percentile is of the waits of the last `window` of ticks",
        ));
    }
    Ok(d)
}

fn boolean(item: &Item) -> Result<bool, UnitError> {
    item.as_bool()
        .ok_or_else(|| expected("true or false", "true", item))
}

/// `status_group`: a group name or a numeric gid (resolved by the agent).
fn status_group(item: &Item) -> Result<Option<String>, UnitError> {
    if let Some(n) = item.as_integer() {
        return u32::try_from(n)
            .map(|gid| Some(gid.to_string()))
            .map_err(|_| expected("a group name or gid", "\"governor\"", item));
    }
    let s = item
        .as_str()
        .ok_or_else(|| expected("a group name or gid", "\"governor\"", item))?;
    if s.is_empty() || s.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(UnitError::new(
            format!("{s:?} is not a group name"),
            "write a group's name or gid, e.g. \"governor\"",
        ));
    }
    Ok(Some(s.to_owned()))
}

fn string(item: &Item) -> Result<String, UnitError> {
    item.as_str()
        .map(str::to_owned)
        .ok_or_else(|| expected("a string", "\"text\"", item))
}

fn name(item: &Item) -> Result<String, UnitError> {
    let s = string(item)?;
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(UnitError::new(
            format!(
                "policy name {s:?} is empty or has characters other than letters, digits, '-', '_', '.'"
            ),
            "use a short label such as \"api-over-batch\" (it becomes a metrics label)",
        ));
    }
    Ok(s)
}

fn port(item: &Item) -> Result<u16, UnitError> {
    let help = "write a TCP port from 1 to 65535, e.g. port = 8080";
    match item.as_integer() {
        Some(p @ 1..=65535) => Ok(p as u16),
        Some(p) => Err(UnitError::new(format!("port {p} is out of range"), help)),
        None => Err(expected("a port number", "8080", item)),
    }
}

fn cgroup(item: &Item) -> Result<CgroupPath, UnitError> {
    let s = item
        .as_str()
        .ok_or_else(|| expected("a cgroup path", "\"/workload/batch\"", item))?;
    CgroupPath::new(s).map_err(|e| {
        UnitError::new(
            e.to_string(),
            "write the path relative to the cgroup2 mount, e.g. \"/workload/batch\"",
        )
    })
}

fn number_or_str<T: std::str::FromStr<Err = UnitError>>(
    what: &str,
    example: &str,
) -> impl Fn(&Item) -> Result<T, UnitError> {
    move |item| match item {
        Item::Value(Value::String(s)) => s.value().parse(),
        Item::Value(Value::Integer(i)) => i.value().to_string().parse(),
        Item::Value(Value::Float(f)) => f.value().to_string().parse(),
        _ => Err(expected(what, example, item)),
    }
}

/// A throttle's `rate`: fixed, or a share of the accepted rate.
enum ThrottleRate {
    Fixed(Rate),
    Share(Ratio),
}

fn throttle_rate(item: &Item) -> Result<ThrottleRate, UnitError> {
    if let Some(text) = item.as_str().map(str::trim)
        && text.ends_with('%')
    {
        let share: Ratio = text.parse().map_err(|_| {
            UnitError::new(
                format!("rate {text:?} is not a percentage between 0% and 100%"),
                "write a share of the port's accepted rate, e.g. \"95%\", or a fixed rate, e.g. \"200/s\"",
            )
        })?;
        if share.get() <= 0.0 {
            return Err(UnitError::new(
                "a rate of 0% admits nothing",
                "use reject_connections to refuse all, or write a share above 0, e.g. \"95%\"",
            ));
        }
        return Ok(ThrottleRate::Share(share));
    }
    rate(item).map(ThrottleRate::Fixed)
}

fn rate(item: &Item) -> Result<Rate, UnitError> {
    match item {
        Item::Value(Value::String(s)) => {
            let r: Rate = s.value().parse()?;
            if r.as_per_second() <= 0.0 {
                return Err(UnitError::new(
                    "a rate of 0 admits nothing",
                    "use reject_connections to refuse all, or write a rate above 0, e.g. \"200/s\"",
                ));
            }
            Ok(r)
        }
        Item::Value(Value::Integer(i)) => Err(UnitError::new(
            format!("rate {} has no unit", i.value()),
            format!(
                "write it as a string with its unit, e.g. \"{}/s\"",
                i.value()
            ),
        )),
        _ => Err(expected("a rate", "\"200/s\"", item)),
    }
}

fn level(unit: SignalUnit) -> impl Fn(&Item) -> Result<f64, UnitError> {
    move |item| match unit {
        SignalUnit::Latency => {
            duration(item)
                .map(|d| d.as_secs_f64() * 1e6)
                .map_err(|e| UnitError {
                    help: format!(
                        "{} (this signal is a run-queue wait, so its watermarks are durations)",
                        e.help
                    ),
                    ..e
                })
        }
        SignalUnit::Ratio => number_or_str::<Ratio>("a ratio", "0.8")(item).map(Ratio::get),
        SignalUnit::Rate => rate(item).map(Rate::as_per_second),
    }
}

fn array<'a>(item: &'a Item, what: &str, example: &str) -> Result<Vec<&'a Value>, UnitError> {
    item.as_array()
        .map(|a| a.iter().collect())
        .ok_or_else(|| expected(what, example, item))
}

// --- the tables ------------------------------------------------------------

pub(super) fn parse(src: &str, options: &LoadOptions) -> Result<Config, Vec<ConfigError>> {
    let mut cx = Cx {
        src,
        errors: Vec::new(),
    };
    let doc = match ImDocument::parse(src) {
        Ok(d) => d,
        Err(e) => {
            // A syntax error leaves nothing to walk: it is the only error.
            let msg = e.message().trim().to_owned();
            cx.error(
                &e.span(),
                format!("invalid TOML: {msg}"),
                "fix the syntax at this place (quotes, brackets, `key = value`)",
            );
            return Err(cx.errors);
        }
    };
    let root = Table {
        t: doc.as_table(),
        span: Some(0..0),
        what: "the file".to_owned(),
    };
    root.unknown_keys(&mut cx, ROOT_KEYS);

    let agent = match root.get("agent") {
        None => Some(AgentConfig::default()),
        Some((item, span)) => match Table::from_item(item, "[agent]".to_owned()) {
            Some(t) => agent(&mut cx, &t),
            None => {
                cx.error(
                    &span,
                    format!("`agent` must be a table, found {}", found(item)),
                    "write it as an [agent] section",
                );
                None
            }
        },
    };

    let mut protected = Protected::builtin(options.agent_cgroup.as_ref());
    if let Some(a) = &agent {
        for t in &a.protect {
            protected
                .entries
                .push((t.clone(), "listed in agent.protect".to_owned()));
        }
    }

    let mut policies = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut all_valid = true;
    for (i, t) in policy_tables(&mut cx, &root).into_iter().enumerate() {
        // Duplicates are found among every policy, valid or not.
        if let Some((Some(name), span)) = t.get("name").map(|(item, span)| (item.as_str(), span)) {
            if let Some(first) = names.get(name) {
                cx.error(
                    &span,
                    format!(
                        "policy name {name:?} is already used by policy #{}",
                        first + 1
                    ),
                    "give each [[policy]] its own name: names key its state, metrics and logs",
                );
                all_valid = false;
            } else {
                names.insert(name.to_owned(), i);
            }
        }
        match policy(&mut cx, &t, &protected) {
            Some(p) => policies.push(p),
            None => all_valid = false,
        }
    }

    match agent {
        Some(agent) if cx.errors.is_empty() && all_valid => Ok(Config { agent, policies }),
        _ => {
            cx.errors.sort_by_key(|e| e.location);
            Err(cx.errors)
        }
    }
}

fn agent(cx: &mut Cx<'_>, t: &Table<'_>) -> Option<AgentConfig> {
    t.unknown_keys(cx, AGENT_KEYS);
    let d = AgentConfig::default();
    let tick = t.or(cx, "tick", d.tick, positive_duration);
    let window = t.or(cx, "window", d.window, window);
    let metrics_addr = t.or(cx, "metrics_addr", d.metrics_addr, |item| {
        let s = item
            .as_str()
            .ok_or_else(|| expected("an address", "\"127.0.0.1:9929\"", item))?;
        s.parse::<SocketAddr>().map_err(|_| {
            UnitError::new(
                format!("{s:?} is not an address with a port"),
                "write ip:port, e.g. \"127.0.0.1:9929\"",
            )
        })
    });
    let status_socket = t.or(cx, "status_socket", d.status_socket.clone(), |item| {
        let s = item
            .as_str()
            .ok_or_else(|| expected("a path", "\"/run/governor/governor.sock\"", item))?;
        if !s.starts_with('/') {
            return Err(UnitError::new(
                format!("{s:?} is not an absolute path"),
                "write e.g. \"/run/governor/governor.sock\"",
            ));
        }
        Ok(PathBuf::from(s))
    });
    let status_group = t.or(cx, "status_group", None, status_group);
    let abs_path = |example: &'static str| {
        move |item: &Item| -> Result<Option<PathBuf>, UnitError> {
            let s = item
                .as_str()
                .ok_or_else(|| expected("a path", example, item))?;
            if !s.starts_with('/') {
                return Err(UnitError::new(
                    format!("{s:?} is not an absolute path"),
                    format!("write e.g. {example}"),
                ));
            }
            Ok(Some(PathBuf::from(s)))
        }
    };
    let netns = t.or(cx, "netns", None, abs_path("\"/run/netns/web\""));
    let journal_dir = t.or(
        cx,
        "journal_dir",
        Some(d.journal_dir.clone()),
        abs_path("\"/run/governor\""),
    );
    let dry_run = t.or(cx, "dry_run", d.dry_run, boolean);
    let record = t.or(cx, "record", d.record, boolean);
    let record_dir = t.or(
        cx,
        "record_dir",
        Some(d.record_dir.clone()),
        abs_path("\"/var/lib/governor/record\""),
    );
    let record_keep = t.or(cx, "record_keep", d.record_keep, duration);
    let record_max = t.or(cx, "record_max", d.record_max, |item| {
        number_or_str::<Bytes>("a size", "\"256MiB\"")(item).map(Bytes::get)
    });
    let seed = t.or(cx, "seed", None, |item| match item.as_integer() {
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        _ => Err(expected("a non-negative integer", "42", item)),
    });
    let mut protect_ok = true;
    let mut protect = Vec::new();
    if let Some((item, span)) = t.get("protect") {
        match array(
            item,
            "a list of cgroup paths and ports",
            "[\"/system.slice/postgresql.service\", 5432]",
        ) {
            Err(e) => {
                cx.error(
                    &span,
                    format!("`protect` in [agent]: {}", e.problem),
                    e.help,
                );
                protect_ok = false;
            }
            Ok(values) => {
                for v in values {
                    let item = Item::Value(v.clone());
                    let parsed = if v.is_integer() {
                        port(&item).map(Target::Port)
                    } else {
                        cgroup(&item).map(Target::Cgroup)
                    };
                    match parsed {
                        Ok(target) => protect.push(target),
                        Err(e) => {
                            cx.error(
                                &v.span(),
                                format!("`protect` in [agent]: {}", e.problem),
                                e.help,
                            );
                            protect_ok = false;
                        }
                    }
                }
            }
        }
    }
    Some(AgentConfig {
        tick: tick?,
        window: window?,
        metrics_addr: metrics_addr?,
        status_socket: status_socket?,
        status_group: status_group?,
        dry_run: dry_run?,
        protect: protect_ok.then_some(protect)?,
        seed: seed?,
        netns: netns?,
        journal_dir: journal_dir?.unwrap_or(d.journal_dir),
        record: record?,
        record_dir: record_dir?.unwrap_or(d.record_dir),
        record_keep: record_keep?,
        record_max: record_max?,
    })
}

/// The `[[policy]]` tables (or `policy = [{...}]`).
fn policy_tables<'a>(cx: &mut Cx<'_>, root: &Table<'a>) -> Vec<Table<'a>> {
    let Some((item, span)) = root.get("policy") else {
        return Vec::new();
    };
    let what = |i: usize| format!("[[policy]] #{}", i + 1);
    match item {
        Item::ArrayOfTables(a) => a
            .iter()
            .enumerate()
            .map(|(i, t)| Table {
                t,
                span: t.span(),
                what: what(i),
            })
            .collect(),
        Item::Value(Value::Array(a)) if a.iter().all(Value::is_inline_table) => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.as_inline_table().map(|t| Table {
                    t,
                    span: t.span(),
                    what: what(i),
                })
            })
            .collect(),
        _ => {
            cx.error(
                &span,
                format!("`policy` must be a list of tables, found {}", found(item)),
                "write each policy as a [[policy]] section",
            );
            Vec::new()
        }
    }
}

fn policy(cx: &mut Cx<'_>, t: &Table<'_>, protected: &Protected) -> Option<PolicyConfig> {
    t.unknown_keys(cx, POLICY_KEYS);
    let name = t
        .req(cx, "name", "\"api-over-batch\"", name)
        .map(|(n, _)| n);
    // Name the policy in later messages, so errors read "[[policy]] \"api\"".
    let t = &t.renamed(
        name.as_ref()
            .map_or_else(|| t.what.clone(), |n| format!("policy {n:?}")),
    );

    let signal = match t.get("signal") {
        None => {
            cx.error(
                &t.span,
                format!("{} has no `signal`", t.what),
                "add it, e.g. signal = { kind = \"runq_p99\", cgroup = \"/workload/api\" }",
            );
            None
        }
        Some((item, span)) => match Table::from_item(item, format!("the signal of {}", t.what)) {
            Some(st) => signal(cx, &st),
            None => {
                cx.error(
                    &span,
                    format!("`signal` must be a table, found {}", found(item)),
                    "write e.g. signal = { kind = \"runq_p99\", cgroup = \"/workload/api\" }",
                );
                None
            }
        },
    };

    // Watermarks are written in the signal's unit; without a valid signal
    // their unit is unknown, so they are only checked for presence.
    let watermarks = match &signal {
        Some(s) => {
            let unit = s.kind.unit();
            let example = match unit {
                SignalUnit::Latency => ("\"2ms\"", "\"500us\""),
                SignalUnit::Ratio => ("0.8", "0.2"),
                SignalUnit::Rate => ("\"1000/s\"", "\"200/s\""),
            };
            let high = t.req(cx, "high", example.0, level(unit));
            let low = t.req(cx, "low", example.1, level(unit));
            match (high, low) {
                (Some((high, _)), Some((low, low_span))) if low >= high => {
                    let (h, l) = (Level { unit, value: high }, Level { unit, value: low });
                    cx.error(
                        &low_span,
                        format!("in {}, low ({l}) must be below high ({h})", t.what),
                        "lower `low` or raise `high`: the gap between them is what keeps the policy from flapping",
                    );
                    None
                }
                (Some((high, _)), Some((low, _))) => Some(Watermarks {
                    high: Level { unit, value: high },
                    low: Level { unit, value: low },
                }),
                _ => None,
            }
        }
        None => {
            for key in ["high", "low"] {
                if t.get(key).is_none() {
                    cx.error(&t.span, format!("{} has no `{key}`", t.what), format!("add it, in the unit of the signal, e.g. {key} = \"2ms\" for run-queue latency"));
                }
            }
            None
        }
    };

    let hold_for = t.or(cx, "for", super::DEFAULT_FOR, duration);
    let settle = match (t.get("settle"), t.get("cooldown")) {
        (Some(_), Some((_, span))) => {
            cx.error(
                &span,
                format!("{} has both `settle` and `cooldown`", t.what),
                "they are the same setting: keep one",
            );
            None
        }
        (None, Some(_)) => t.or(cx, "cooldown", super::DEFAULT_SETTLE, duration),
        _ => t.or(cx, "settle", super::DEFAULT_SETTLE, duration),
    };
    let recover_every = t
        .opt(cx, "recover_every", positive_duration)
        .ok()
        .map(|v| v.map_or(super::DEFAULT_RECOVER_EVERY, |(d, _)| d));
    let default_jitter = Ratio::new(super::DEFAULT_JITTER).unwrap_or_default();
    let jitter = t.or(
        cx,
        "jitter",
        default_jitter,
        number_or_str::<Ratio>("a ratio", "0.3"),
    );
    let dry_run = t.or(cx, "dry_run", None, |i| boolean(i).map(Some));
    let own_window = match (t.opt(cx, "window", window), &signal) {
        (Ok(Some((_, span))), Some(s)) if s.kind.unit() != SignalUnit::Latency => {
            cx.error(
                &span,
                format!("`window` in {} applies to run-queue signals only, not {}", t.what, s.kind),
                "remove it: runq_p99 and runq_p50 are percentiles over a window; other signals are read as they are",
            );
            None
        }
        (Ok(w), _) => Some(w.map(|(d, _)| d)),
        (Err(()), _) => None,
    };

    let fb = FlapBudget::default();
    let flap_transitions = t.or(cx, "flap_budget", fb.transitions, |item| match item.as_integer() {
        Some(n @ 2..=1000) => Ok(n as u32),
        Some(n) => Err(UnitError::new(
            format!("a flap budget of {n} transitions is out of range"),
            "allow at least 2 (one step up and one down) and at most 1000, e.g. flap_budget = 6",
        )),
        None => Err(expected("a number of transitions", "6", item)),
    });
    let flap_window = t.or(cx, "flap_window", fb.window, positive_duration);

    let bo = Backoff::default();
    let factor = t.or(cx, "backoff", bo.factor, |item| {
        let f = item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64));
        match f {
            Some(f) if (1.0..=16.0).contains(&f) => Ok(f),
            Some(f) => Err(UnitError::new(
                format!("backoff factor {f} is outside 1–16"),
                "write e.g. backoff = 2.0 (1.0 turns backoff off)",
            )),
            None => Err(expected("a factor", "2.0", item)),
        }
    });
    let backoff_max = t.opt(cx, "backoff_max", positive_duration);
    let retrip_within = t.or(cx, "retrip_within", bo.retrip_within, duration);
    let forget_after = t.or(cx, "backoff_reset", bo.forget_after, positive_duration);
    let backoff_max = match (backoff_max, recover_every) {
        (Ok(Some((max, span))), Some(every)) if max < every => {
            cx.error(
                &span,
                format!("in {}, backoff_max ({}) is shorter than recover_every ({})", t.what, super::units::format_duration(max), super::units::format_duration(every)),
                "backoff_max bounds the delay of a step down, which starts at recover_every: raise it",
            );
            None
        }
        (Ok(Some((max, _))), _) => Some(max),
        (Ok(None), every) => Some(bo.max.max(every.unwrap_or_default())),
        (Err(()), _) => None,
    };

    let guard = match t.get("guard") {
        None => Some(None),
        Some((item, span)) => match Table::from_item(item, format!("the guard of {}", t.what)) {
            Some(gt) => guard_spec(cx, &gt).map(Some),
            None => {
                cx.error(
                    &span,
                    format!("`guard` must be a table, found {}", found(item)),
                    "write e.g. guard = { port = 8080, max_queue = \"50%\", max_delay = \"100ms\" }",
                );
                None
            }
        },
    };

    let ladder = match t.get("ladder") {
        None => {
            cx.error(&t.span, format!("{} has no `ladder`", t.what), "add one, e.g. ladder = [{ action = \"cpu_weight\", cgroup = \"/workload/batch\", weight = \"idle\" }]");
            None
        }
        Some((item, span)) => ladder(cx, t, item, span, signal.as_ref(), protected),
    };

    Some(PolicyConfig {
        name: name?,
        signal: signal?,
        watermarks: watermarks?,
        hold_for: hold_for?,
        settle: settle?,
        recover_every: recover_every?,
        jitter: jitter?,
        window: own_window?,
        dry_run: dry_run?,
        flap_budget: FlapBudget {
            transitions: flap_transitions?,
            window: flap_window?,
        },
        backoff: Backoff {
            factor: factor?,
            max: backoff_max?,
            retrip_within: retrip_within?,
            forget_after: forget_after?,
        },
        ladder: ladder?,
        guard: guard?,
    })
}

/// `mode = "reset" | "drop"` of a connection rung or a guard; `hint` says
/// what to write where it is neither.
fn reject_mode(item: &Item, hint: &str) -> Result<RejectMode, UnitError> {
    match item.as_str() {
        Some("reset") => Ok(RejectMode::Reset),
        Some("drop") => Ok(RejectMode::Drop),
        _ => Err(UnitError::new(
            format!(
                "mode must be \"reset\" or \"drop\", found {}",
                item.to_string().trim()
            ),
            hint,
        )),
    }
}

/// `guard = { port = 8080, max_queue = "50%" | 64, max_delay = "100ms", mode = "reset" }`.
fn guard_spec(cx: &mut Cx<'_>, t: &Table<'_>) -> Option<crate::decide::guard::GuardSpec> {
    use crate::decide::guard::{GuardSpec, MaxQueue};
    t.unknown_keys(cx, GUARD_KEYS);
    let port = t.req(cx, "port", "8080", port).map(|(p, _)| p);
    let max_queue = t.or(cx, "max_queue", MaxQueue::Share(Ratio::new(0.5).unwrap_or_default()), |item| {
        if let Some(n) = item.as_integer() {
            return u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .map(MaxQueue::Count)
                .ok_or_else(|| UnitError::new(format!("max_queue must be a positive count, found {n}"), "write e.g. max_queue = 64 or max_queue = \"50%\" (of the listener's backlog)"));
        }
        number_or_str::<Ratio>("a count or a share of the backlog", "64 or \"50%\"")(item).map(MaxQueue::Share)
    });
    let max_delay = t.or(cx, "max_delay", None, |i| positive_duration(i).map(Some));
    let min = t.or(cx, "min", 4, |item| {
        item.as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                UnitError::new(
                    format!("min must be a count, found {}", item.to_string().trim()),
                    "write e.g. min = 4",
                )
            })
    });
    let relax_after = t.or(
        cx,
        "relax_after",
        std::time::Duration::from_secs(5),
        positive_duration,
    );
    let mode = t.or(cx, "mode", RejectMode::Reset, |item| {
        reject_mode(
            item,
            "write mode = \"reset\" (RST at once) or mode = \"drop\" (the client retries)",
        )
    });
    Some(GuardSpec {
        port: port?,
        max_queue: max_queue?,
        max_delay: max_delay?,
        min: min?,
        relax_after: relax_after?,
        mode: mode?,
    })
}

fn signal(cx: &mut Cx<'_>, t: &Table<'_>) -> Option<SignalSpec> {
    t.unknown_keys(cx, SIGNAL_KEYS);
    let kinds = SignalKind::ALL.map(SignalKind::name).join(", ");
    let kind = t.req(cx, "kind", "\"runq_p99\"", |item| {
        let s = item
            .as_str()
            .ok_or_else(|| expected("a signal kind", "\"runq_p99\"", item))?;
        SignalKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                UnitError::new(
                    format!("unknown signal kind {s:?}"),
                    format!("use one of: {kinds}"),
                )
            })
    });
    let cg = t.opt(cx, "cgroup", cgroup);
    let pt = t.opt(cx, "port", port);
    let (kind, kind_span) = kind?;
    let (cg, pt) = (cg.ok()?, pt.ok()?);
    let scope = match (kind, cg, pt) {
        (_, Some(_), Some((_, span))) => {
            cx.error(
                &span,
                format!("{} has both `cgroup` and `port`", t.what),
                "a signal is measured in one place: keep one",
            );
            return None;
        }
        (
            SignalKind::AcceptQueueFill | SignalKind::AcceptedRate | SignalKind::AcceptQueueDelay,
            None,
            Some((p, _)),
        ) => Scope::Port(p),
        (
            SignalKind::AcceptQueueFill | SignalKind::AcceptedRate | SignalKind::AcceptQueueDelay,
            cg,
            None,
        ) => {
            let span = cg.map_or(kind_span, |(_, s)| s);
            cx.error(
                &span,
                format!("{kind} is measured on a port"),
                "write the listening port, e.g. port = 8080",
            );
            return None;
        }
        (SignalKind::ConnectRate, Some((c, _)), None) => Scope::Cgroup(c),
        (SignalKind::ConnectRate, None, pt) => {
            let span = pt.map_or(kind_span, |(_, s)| s);
            cx.error(
                &span,
                "connect_rate is measured on a cgroup",
                "write the cgroup that connects, e.g. cgroup = \"/workload/crawler\"",
            );
            return None;
        }
        (_, _, Some((_, span))) => {
            cx.error(
                &span,
                format!("{kind} is measured on a cgroup or the host, not a port"),
                "write cgroup = \"/workload/api\", or leave it out for the host",
            );
            return None;
        }
        (_, Some((c, _)), None) => Scope::Cgroup(c),
        (_, None, None) => Scope::Host,
    };
    Some(SignalSpec { kind, scope })
}

fn ladder(
    cx: &mut Cx<'_>,
    policy: &Table<'_>,
    item: &Item,
    span: Span,
    signal: Option<&SignalSpec>,
    protected: &Protected,
) -> Option<Ladder> {
    let what = |i: usize| format!("rung {} of {}", i + 1, policy.what);
    let rungs: Vec<Table<'_>> = match item {
        Item::Value(Value::Array(a)) if a.iter().all(Value::is_inline_table) => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.as_inline_table().map(|t| Table {
                    t,
                    span: t.span(),
                    what: what(i),
                })
            })
            .collect(),
        Item::ArrayOfTables(a) => a
            .iter()
            .enumerate()
            .map(|(i, t)| Table {
                t,
                span: t.span(),
                what: what(i),
            })
            .collect(),
        _ => {
            cx.error(&span, format!("`ladder` of {} must be a list of actions, found {}", policy.what, found(item)), "write e.g. ladder = [{ action = \"cpu_weight\", cgroup = \"/workload/batch\", weight = \"idle\" }]");
            return None;
        }
    };
    if rungs.is_empty() {
        cx.error(&span, format!("the ladder of {} is empty", policy.what), "add at least one action, mildest first, e.g. { action = \"cpu_weight\", cgroup = \"/workload/batch\", weight = \"idle\" }");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for r in &rungs {
        match rung(cx, r) {
            Some((action, target_span)) => {
                if let Some(why) = protected.covers(&action.target()) {
                    cx.error(&target_span, format!("{} acts on a protected target: {why}", r.what), "act on another target, or remove the rung: protected targets are never acted on");
                    ok = false;
                }
                if let Some(s) = signal.filter(|s| action.inflates(s)) {
                    cx.error(
                        &target_span,
                        format!("{} limits {}, which {s} measures: the action would inflate its own signal", r.what, action.target()),
                        "measure the cgroup you protect (e.g. signal.cgroup = \"/workload/api\") and limit another one",
                    );
                    ok = false;
                }
                out.push(action);
            }
            None => ok = false,
        }
    }
    ok.then_some(Ladder { rungs: out })
}

/// One rung; returns the action and the place of its target.
fn rung(cx: &mut Cx<'_>, t: &Table<'_>) -> Option<(Action, Span)> {
    let names = Action::NAMES.join(", ");
    let (action, action_span) = t.req(cx, "action", "\"cpu_weight\"", |item| {
        let s = item
            .as_str()
            .ok_or_else(|| expected("an action", "\"cpu_weight\"", item))?;
        Action::NAMES.into_iter().find(|n| *n == s).ok_or_else(|| {
            UnitError::new(
                format!("unknown action {s:?}"),
                format!("use one of: {names}"),
            )
        })
    })?;
    let t = &t.renamed(format!("{} ({action})", t.what));
    let known: &[&str] = match action {
        "cpu_weight" => &["action", "cgroup", "weight"],
        "cpu_limit" => &["action", "cgroup", "cpus"],
        "memory_high" => &["action", "cgroup", "bytes"],
        "throttle_connections" => &[
            "action", "port", "cgroup", "rate", "burst", "mode", "exempt",
        ],
        _ => &["action", "port", "cgroup", "mode", "exempt"],
    };
    t.unknown_keys(cx, known);

    let cgroup_target = |cx: &mut Cx<'_>| t.req(cx, "cgroup", "\"/workload/batch\"", cgroup);
    match action {
        "cpu_weight" => {
            let c = cgroup_target(cx);
            let w = t.req(
                cx,
                "weight",
                "\"idle\"",
                number_or_str::<CpuWeight>("a weight", "\"idle\" or 10"),
            );
            let (cgroup, span) = c?;
            Some((
                Action::CpuWeight {
                    cgroup,
                    weight: w?.0,
                },
                span,
            ))
        }
        "cpu_limit" => {
            let c = cgroup_target(cx);
            let cpus = t.req(
                cx,
                "cpus",
                "0.25",
                number_or_str::<Cpus>("a number of CPUs", "0.25"),
            );
            let (cgroup, span) = c?;
            Some((
                Action::CpuLimit {
                    cgroup,
                    cpus: cpus?.0,
                },
                span,
            ))
        }
        "memory_high" => {
            let c = cgroup_target(cx);
            let bytes = t.req(
                cx,
                "bytes",
                "\"512MiB\"",
                number_or_str::<Bytes>("a size", "\"512MiB\""),
            );
            let (cgroup, span) = c?;
            Some((
                Action::MemoryHigh {
                    cgroup,
                    bytes: bytes?.0,
                },
                span,
            ))
        }
        _ => {
            let pt = t.opt(cx, "port", port);
            let cg = t.opt(cx, "cgroup", cgroup);
            let mode = t.or(cx, "mode", RejectMode::Reset, |item| {
                reject_mode(
                    item,
                    "write mode = \"reset\" (fail fast) or mode = \"drop\"",
                )
            });
            let exempt = exempt(cx, t);
            let target = match (pt.ok()?, cg.ok()?) {
                (Some((p, span)), None) => (Target::Port(p), span),
                (None, Some((c, span))) => (Target::Cgroup(c), span),
                (Some(_), Some((_, span))) => {
                    cx.error(&span, format!("{} has both `port` and `cgroup`", t.what), "use port for inbound connections to a listener, cgroup for outbound connects of a cgroup: one of them");
                    return None;
                }
                (None, None) => {
                    cx.error(
                        &action_span,
                        format!("{} has no target", t.what),
                        "add port = 8080 (inbound) or cgroup = \"/workload/crawler\" (outbound)",
                    );
                    return None;
                }
            };
            let (mode, exempt) = (mode?, exempt?);
            if action == "reject_connections" {
                return Some((
                    Action::RejectConnections {
                        target: target.0,
                        mode,
                        exempt,
                    },
                    target.1,
                ));
            }
            let rate = t.req(cx, "rate", "\"200/s\"", throttle_rate);
            let (rate, rate_span) = rate?;
            let (rate, of_accepted) = match rate {
                ThrottleRate::Fixed(r) => (r, None),
                ThrottleRate::Share(share) => {
                    if !matches!(target.0, Target::Port(_)) {
                        cx.error(
                            &rate_span,
                            format!(
                                "rate = \"{}%\" in {} is a share of a port's accepted rate, but the target is a cgroup",
                                share.get() * 100.0,
                                t.what
                            ),
                            "write a fixed rate for outbound connects, e.g. \"200/s\"",
                        );
                        return None;
                    }
                    (
                        Rate::per_second(0.0),
                        Some(OfAccepted {
                            share,
                            measured: None,
                            drain: 0.0,
                        }),
                    )
                }
            };
            // One second's worth; a share's is set when it is resolved.
            let default_burst = if of_accepted.is_some() {
                0
            } else {
                rate.as_per_second().ceil().clamp(1.0, u32::MAX as f64) as u32
            };
            let burst = t.or(cx, "burst", default_burst, |item| match item.as_integer() {
                Some(b @ 1..=0xFFFF_FFFF) => Ok(b as u32),
                Some(b) => Err(UnitError::new(
                    format!("burst {b} is out of range"),
                    "write a bucket size of at least 1, e.g. burst = 50",
                )),
                None => Err(expected("a number of connections", "50", item)),
            })?;
            Some((
                Action::ThrottleConnections {
                    target: target.0,
                    rate,
                    of_accepted,
                    burst,
                    mode,
                    exempt,
                },
                target.1,
            ))
        }
    }
}

fn exempt(cx: &mut Cx<'_>, t: &Table<'_>) -> Option<Vec<IpNet>> {
    let Some((item, span)) = t.get("exempt") else {
        return Some(Vec::new());
    };
    let values = match array(item, "a list of CIDRs", "[\"10.0.0.0/8\"]") {
        Ok(v) => v,
        Err(e) => {
            cx.error(
                &span,
                format!("`exempt` in {}: {}", t.what, e.problem),
                e.help,
            );
            return None;
        }
    };
    let mut out = Vec::new();
    let mut ok = true;
    for v in values {
        let parsed = v.as_str().and_then(|s| {
            s.parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        });
        match parsed {
            Some(n) => out.push(n),
            None => {
                cx.error(
                    &v.span(),
                    format!(
                        "`exempt` in {}: {} is not an address or CIDR",
                        t.what,
                        v.to_string().trim()
                    ),
                    "write peers as CIDRs, e.g. \"10.0.0.0/8\" or \"2001:db8::/32\"",
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}
