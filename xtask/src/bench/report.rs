//! `target/bench/results.json` (scenario → metric → value, merged across
//! invocations: a scenario run again replaces its own entry) and
//! `target/bench/results.md` (each scenario's Markdown section, kept in
//! `target/bench/<scenario>.md`, joined in a fixed order).

use std::{fs, path::PathBuf};

use anyhow::Context as _;

use crate::util::workspace_root;

/// Scenarios in the order results.md shows them.
const ORDER: &[&str] = &[
    "probes",
    "enforce",
    "reaction",
    "noisy",
    "overload",
    "herd",
    "footprint",
    "replay",
];

pub fn dir() -> anyhow::Result<PathBuf> {
    let d = workspace_root().join("target/bench");
    fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
    Ok(d)
}

/// One scenario's figures and its Markdown section.
pub struct Section {
    scenario: &'static str,
    metrics: serde_json::Map<String, serde_json::Value>,
    md: String,
}

impl Section {
    pub fn new(scenario: &'static str, title: &str, command: &str) -> Self {
        Self {
            scenario,
            metrics: serde_json::Map::new(),
            md: format!("## {title}\n\n`{command}`\n\n"),
        }
    }

    /// Records `metric` = `value` (non-finite values become null).
    pub fn metric(&mut self, metric: &str, value: f64) {
        self.metrics.insert(
            metric.to_owned(),
            serde_json::Number::from_f64(value).map_or(serde_json::Value::Null, Into::into),
        );
    }

    /// Records a text figure (a verdict, a note).
    pub fn text(&mut self, metric: &str, value: &str) {
        self.metrics.insert(
            metric.to_owned(),
            serde_json::Value::String(value.to_owned()),
        );
    }

    /// Appends Markdown (printed as well).
    pub fn md(&mut self, text: &str) {
        println!("{text}");
        self.md.push_str(text);
        self.md.push('\n');
    }

    /// A target line: `met` or `NOT met`, recorded as `target: <name>`.
    pub fn target(&mut self, name: &str, met: bool, detail: &str) {
        let verdict = if met { "met" } else { "NOT met" };
        self.text(&format!("target: {name}"), verdict);
        self.md(&format!("- Target {name}: **{verdict}** ({detail})"));
    }

    /// Writes the section and merges it into results.json / results.md.
    pub fn write(self) -> anyhow::Result<()> {
        let d = dir()?;
        fs::write(d.join(format!("{}.md", self.scenario)), &self.md)?;
        let path = d.join("results.json");
        let mut all: serde_json::Map<String, serde_json::Value> = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        all.insert(
            self.scenario.to_owned(),
            serde_json::Value::Object(self.metrics),
        );
        fs::write(&path, serde_json::to_string_pretty(&all)?)?;
        let mut md = String::from(
            "# governor benchmarks\n\nWritten by `cargo xtask bench`; each section names the command that produced it.\n\n",
        );
        for s in ORDER {
            if let Ok(text) = fs::read_to_string(d.join(format!("{s}.md"))) {
                md.push_str(&text);
                md.push('\n');
            }
        }
        fs::write(d.join("results.md"), md)?;
        eprintln!("wrote {} and results.md", path.display());
        Ok(())
    }
}
