//! Stopping a mount that is in use. A plain unmount fails while a process has a file open
//! or its working directory in the mount; the mount then detaches itself (lazy unmount),
//! lets the requests it is serving finish for a moment, and ends its kernel connection
//! (fusectl's `abort`), so that every request still waiting fails at once instead of
//! hanging: a process blocked on a dead mount cannot even be killed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Longest wait for buffered data to be written out when told to stop.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for the metaservers to hear that this mount goes.
pub const GOODBYE_LIMIT: Duration = Duration::from_secs(3);
/// How long requests being served may still take once the mount is detached.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// The kernel's id of the FUSE connection mounted at `mountpoint` (its device number, as
/// /proc/self/mountinfo shows it: the mount is not asked, it may not answer yet).
pub fn connection_of(mountpoint: &Path) -> Option<u64> {
    let want = absolute(mountpoint);
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (dev, at) = (fields.get(2)?, fields.get(4)?);
        if unescape(at) != want.as_os_str().to_string_lossy() {
            return None;
        }
        let (major, minor) = dev.split_once(':')?;
        let (major, minor): (u64, u64) = (major.parse().ok()?, minor.parse().ok()?);
        Some((major << 20) | minor)
    })
}

/// `path` made absolute without asking the filesystem (the mount itself may be the path).
fn absolute(path: &Path) -> PathBuf {
    let joined = match path.is_absolute() {
        true => path.to_path_buf(),
        false => std::env::current_dir().unwrap_or_default().join(path),
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(b as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Lazy unmount: the mount leaves the namespace now; open files keep it until closed.
pub fn detach(mountpoint: &Path) {
    for (program, args) in [("fusermount3", ["-u", "-z"]), ("fusermount", ["-u", "-z"])] {
        let status = std::process::Command::new(program)
            .args(args)
            .arg(mountpoint)
            .status();
        if status.is_ok_and(|s| s.success()) {
            return;
        }
    }
    let status = std::process::Command::new("umount")
        .arg("-l")
        .arg(mountpoint)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        warn!(mountpoint = %mountpoint.display(), "could not detach the mount");
    }
}

/// Waits (a little) until no request is being served.
pub async fn drain(in_flight: &AtomicUsize) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = in_flight.load(Ordering::Relaxed);
    if left > 0 {
        info!("{left} request(s) still waiting fail as the connection ends");
    }
}

/// Ends the kernel connection: every request still waiting on it fails (ENOTCONN).
/// fusectl is mounted first if nobody has (it usually is, by systemd).
pub fn abort(connection: u64) {
    let abort = Path::new(FUSECTL)
        .join(connection.to_string())
        .join("abort");
    if !abort.exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl", FUSECTL])
            .status();
    }
    if let Err(e) = std::fs::write(&abort, "1") {
        warn!(
            "ending the connection through {}: {e} (waiting processes fail once this process exits)",
            abort.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped_and_paths_made_absolute() {
        assert_eq!(unescape(r"/mnt/with\040space\134x"), "/mnt/with space\\x");
        assert_eq!(unescape(r"/odd\9"), r"/odd\9");
        assert_eq!(absolute(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
