//! Checks of the systemd unit: `systemd-analyze verify` and the exposure
//! score of `systemd-analyze security --offline=true` (at most 3.0).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Highest exposure score accepted.
pub const MAX_EXPOSURE: f64 = 3.0;

/// Verifies the unit (with its binary path pointed at `binary`) and returns
/// its exposure score.
pub fn check(root: &Path, binary: &Path) -> anyhow::Result<f64> {
    let dir = root.join("target/systemd-check");
    fs::create_dir_all(&dir)?;
    let unit = fs::read_to_string(root.join("systemd/governor.service"))
        .context("reading systemd/governor.service")?;
    let unit = unit.replace("/usr/local/bin/governor", &binary.display().to_string());
    fs::write(dir.join("governor.service"), unit)?;
    fs::copy(
        root.join("systemd/governor.slice"),
        dir.join("governor.slice"),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("governor.service"))
        .arg(dir.join("governor.slice"))
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
