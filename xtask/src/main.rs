//! governor's developer tasks. `cargo xtask --help` lists them.

mod bench;
mod deb;
mod fuzz;
mod run;
mod setup;
mod systemd;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
// The toolchain checks are shared with governor/build.rs through a small crate.
use governor_toolchain as ebpf_toolchain;

/// Developer tasks for governor: setup, build-and-load, test.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and the tests need (idempotent): nightly rust-src,
    /// the musl target, bpf-linker (cached outside the clone), Debian packages.
    Setup,
    /// Setup, build, then run `governor run` on this host in dry-run with the
    /// embedded default config, until Ctrl-C. Extra arguments go to `governor run`.
    Run {
        /// Arguments passed on to `governor run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, fmt check, clippy, unit tests, root integration tests; ends with
    /// a `N passed, N failed` line and a non-zero exit on any failure.
    Test(test::TestArgs),
    /// Benchmarks, each beside its peers in the same run (medians, ratios).
    Bench(bench::BenchArgs),
    /// cargo-fuzz (libFuzzer, nightly) on the parsers: config, journal,
    /// sock_diag, procfs, cgroupfs, tracefs; one target or all, N seconds
    /// each; execs/s and corpus size per target, non-zero exit on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// The root integration tests inside QEMU on Debian's kernels (5.10, 6.1,
    /// 6.12) or a given kernel image; one summary line per kernel.
    VmTest(vm::VmArgs),
    /// Setup, release build, then the Debian package with dpkg-deb:
    /// <target>/debian/governor_<version>_<arch>.deb (binary, units, dry-run
    /// config as a conffile, docs, man pages, completions); prints its path.
    Deb,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup().map(|_| ExitCode::SUCCESS),
        Command::Run { args } => run::run(&args),
        Command::Test(args) => test::test(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Fuzz(args) => fuzz::fuzz(&args),
        Command::VmTest(args) => vm::vm_test(&args),
        Command::Deb => deb::build(&util::workspace_root()).map(|deb| {
            println!("{}", deb.display());
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
