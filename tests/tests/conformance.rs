//! POSIX conformance: pjdfstest (the Rust rewrite) on a real mount must report no failures.
//! Needs root (it switches users and creates device nodes), as CI has.

use anyhow::{bail, ensure, Context, Result};
use lattice_tests::{sh, TestCluster};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const VERSION: &str = "0.2.2";
const USER: &str = "pjdfstest";

/// pjdfstest, installed once into the target directory.
fn pjdfstest() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pjdfstest");
    let bin = root.join("bin/pjdfstest");
    let current = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("pjdfstest {VERSION}"));
    if !current {
        sh(&format!(
            "cargo install --quiet --locked --force --root {} --version ={VERSION} pjdfstest",
            root.display()
        ))
        .context("installing pjdfstest")?;
    }
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_reports_no_failures() -> Result<()> {
    let bin = pjdfstest()?;
    if sh(&format!("id {USER}")).is_err() {
        sh(&format!("useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin {USER}"))?;
    }
    let tc = TestCluster::new()?;
    // The tests switch to other users: every directory above the mount must let them in.
    std::fs::set_permissions(tc.state(), std::fs::Permissions::from_mode(0o755))?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    let scratch = mnt.join("pjdfstest");
    std::fs::create_dir(&scratch)?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755))?;
    let other_fs = tempfile::tempdir()?;
    let config = other_fs.path().join("pjdfstest.toml");
    let nobody_group = sh("id -gn nobody")?.trim().to_string();
    let user_group = sh(&format!("id -gn {USER}"))?.trim().to_string();
    std::fs::write(
        &config,
        format!(
            "[features]\nposix_fallocate = {{}}\nrename_ctime = {{}}\nutime_now = {{}}\nutimensat = {{}}\n\
             [settings]\nnaptime = 0.01\n[dummy_auth]\nentries = [[\"nobody\", \"{nobody_group}\"], [\"{USER}\", \"{user_group}\"]]\n"
        ),
    )?;
    let out = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&scratch)
        .arg("-s")
        .arg(other_fs.path())
        .env("NO_COLOR", "1")
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .with_context(|| format!("pjdfstest printed no summary:\n{text}"))?;
    eprintln!("pjdfstest: {summary}");
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .collect();
    ensure!(
        failed.is_empty(),
        "pjdfstest failures:\n{}\n{summary}",
        failed.join("\n")
    );
    if !summary.contains(" 0 failed") {
        bail!("{summary}");
    }
    Ok(())
}
