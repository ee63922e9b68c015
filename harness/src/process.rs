//! Processes of a local cluster: started detached with a pid file and a log file each, found
//! again by pid file, stopped by pid. Only processes whose pid file this harness wrote are
//! ever signalled, and only while they still run the expected program.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One process slot: `<state>/<role>-<n>.pid` and `<state>/<role>-<n>.log`.
#[derive(Clone, Debug)]
pub struct Proc {
    pub role: &'static str,
    pub n: u32,
    pub state: PathBuf,
}

impl Proc {
    pub fn new(state: &Path, role: &'static str, n: u32) -> Proc {
        Proc {
            role,
            n,
            state: state.to_path_buf(),
        }
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.role, self.n)
    }

    pub fn pid_file(&self) -> PathBuf {
        self.state.join(format!("{}.pid", self.name()))
    }

    pub fn log_file(&self) -> PathBuf {
        self.state.join(format!("{}.log", self.name()))
    }

    /// The recorded pid, if that process is alive and still our program.
    pub fn pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        running(pid, self.role).then_some(pid)
    }

    /// Starts `cmd` detached (own process group, output appended to the log file) and
    /// records its pid.
    pub fn spawn(&self, mut cmd: Command) -> Result<i32> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .with_context(|| format!("opening {}", self.log_file().display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.name()))?;
        let pid = child.id() as i32;
        fs::write(self.pid_file(), format!("{pid}\n"))?;
        // The child is reaped by a thread so a killed process never lingers as a zombie.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(pid)
    }

    /// Sends `signal` to the process if it runs; returns whether it did.
    pub fn signal(&self, signal: Signal) -> bool {
        match self.pid() {
            Some(pid) => kill(Pid::from_raw(pid), signal).is_ok(),
            None => false,
        }
    }

    /// `kill -9`: no chance to clean up, as in a crash. Returns once the process is gone
    /// (a slot whose process is still dying would look running, and a restart would be
    /// skipped); false if it was not running.
    pub fn kill9(&self) -> bool {
        if !self.signal(Signal::SIGKILL) {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pid().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Removes the pid file.
    pub fn stop(&self, grace: Duration) -> Result<()> {
        if self.signal(Signal::SIGTERM) {
            let deadline = Instant::now() + grace;
            while self.pid().is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.kill9() && self.pid().is_some() {
                bail!("{} survived SIGKILL", self.name());
            }
        }
        let _ = fs::remove_file(self.pid_file());
        Ok(())
    }

    /// Fails with the end of its log if the process has exited.
    pub fn check_running(&self) -> anyhow::Result<()> {
        if self.pid().is_none() {
            anyhow::bail!(
                "{} exited; log {}:\n{}",
                self.name(),
                self.log_file().display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Whether `pid` is a live (not zombie) process whose command name starts like `program`.
fn running(pid: i32, program: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    // The kernel keeps 15 characters of the command name.
    let expected: String = program.chars().take(15).collect();
    comm == expected && !matches!(state, Some('Z') | Some('X'))
}

/// Polls `check` every 20 ms until it returns true, failing after `limit`.
pub fn wait_until(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the async `check` every 50 ms until it yields a value, failing after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_process_is_gone_when_kill9_returns() {
        let dir = std::env::temp_dir().join(format!("lattice-kill9-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let p = Proc::new(&dir, "sleep", 1);
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            p.spawn(cmd).unwrap();
            assert!(p.pid().is_some());
            assert!(p.kill9());
            // A restart right now must not take the dying process for a live one.
            assert_eq!(p.pid(), None);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
