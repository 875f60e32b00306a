//! Builds the kernel programs (`governor-ebpf`) for `bpfel-unknown-none` with
//! the nightly toolchain and bpf-linker, so that the agent embeds them: one
//! build, one self-contained binary.

use std::env;

use governor_toolchain as ebpf_toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../governor-common/src");
    println!("cargo:rerun-if-changed=../governor-ebpf/src");
    println!("cargo:rerun-if-env-changed=GOVERNOR_CACHE_DIR");
    println!("cargo:rerun-if-env-changed=PATH");

    let toolchain = match ebpf_toolchain::preflight() {
        Ok(t) => t,
        Err(msg) => {
            // Name the missing piece and the command that installs it; exit
            // plainly (an Err would add a backtrace that hides the message).
            eprintln!("error: cannot build governor's kernel programs: {msg}");
            std::process::exit(1);
        }
    };

    // aya-build runs `rustup run nightly cargo build`, which finds bpf-linker
    // on PATH: put ours first.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![toolchain.bpf_linker_dir];
    dirs.extend(env::split_paths(&path));
    let joined = env::join_paths(dirs)?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", joined) };

    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../governor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "governor-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
