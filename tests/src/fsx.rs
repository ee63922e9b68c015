//! Running fsx (the file system exerciser) on a mount: one run is one mix (a config file in
//! tests/fsx/), one seed and a number of operations on one file; a run fails with fsx's own
//! report (the miscompare and the operations that led to it).

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Run {
    pub mix: &'static str,
    pub seed: u64,
    pub ops: u64,
    /// The file fsx works on: `<mount>/fsx-<mix>-<seed>`.
    pub file: PathBuf,
}

impl Run {
    /// A run of `ops` operations (times `LATTICE_FSX_SCALE`) in `dir`.
    pub fn new(dir: &Path, mix: &'static str, seed: u64, ops: u64) -> Run {
        let scale: f64 = crate::size_from_env("LATTICE_FSX_SCALE", 1.0);
        Run {
            mix,
            seed,
            ops: ((ops as f64 * scale) as u64).max(1),
            file: dir.join(format!("fsx-{mix}-{seed}")),
        }
    }

    /// Runs fsx to the end; an error carries the head and tail of its report.
    pub fn run(&self) -> Result<u64> {
        let config = mix_file(self.mix);
        let artifacts = tempfile::tempdir()?;
        let out = std::process::Command::new(binary()?)
            .args(["-N", &self.ops.to_string(), "-S", &self.seed.to_string()])
            .arg("-f")
            .arg(&config)
            .arg("-P")
            .arg(artifacts.path())
            .arg(&self.file)
            .output()
            .context("running fsx")?;
        if !out.status.success() {
            let report = String::from_utf8_lossy(&out.stderr);
            // Its first lines say what went wrong; the last ones, the operations before.
            let lines: Vec<&str> = report.lines().collect();
            let head = lines.len().min(10);
            let from = lines.len().saturating_sub(70).max(head);
            let tail = [&lines[..head], &["..."], &lines[from..]]
                .concat()
                .join("\n");
            bail!(
                "fsx mix {} seed {} ({} ops) on {} failed ({}):\n{tail}",
                self.mix,
                self.seed,
                self.ops,
                self.file.display(),
                out.status
            );
        }
        Ok(self.ops)
    }
}

/// Runs all `runs`, `parallel` at a time; returns the operations done. The first failure
/// ends the wait.
pub async fn run_many(runs: &[Run], parallel: usize) -> Result<u64> {
    let done: Vec<u64> = stream::iter(runs.iter().cloned())
        .map(|run| async move { tokio::task::spawn_blocking(move || run.run()).await? })
        .buffer_unordered(parallel)
        .try_collect()
        .await?;
    Ok(done.iter().sum())
}

pub fn mix_file(mix: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fsx")
        .join(format!("{mix}.toml"))
}

/// fsx on the PATH, or where `cargo install` puts it.
pub fn binary() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/fsx"));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("fsx"))
        .chain(cargo_bin)
        .find(|p| p.is_file())
        .context(
            "fsx is not installed: scripts/deps.sh installs it (cargo install fsx --version 0.3.2)",
        )
}
