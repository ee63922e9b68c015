//! Structured logs for every process: `RUST_LOG` filters (default `info`), and
//! `LATTICE_LOG_FORMAT=json` switches to one JSON object per line for log collectors.
//! Every process that logs also dies at its first panic, in any thread (see [`init_with`]).

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_with("info");
}

/// Like [`init`], with another level for when `RUST_LOG` is not set.
///
/// A panic anywhere ends the process at once, after one log line saying where: a server
/// with a dead thread (say, the Raft core) would otherwise look alive to `status` and to
/// supervisors while answering nothing.
pub fn init_with(default_level: &str) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map_or_else(|| "unknown".to_string(), |l| l.to_string());
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "panic, stopping the process: {}",
            panic_message(info)
        );
        report(info);
        std::process::abort();
    }));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LATTICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Set in the child process the test below starts from this same test binary.
    const CHILD: &str = "LATTICE_PANIC_CHILD";

    /// The child's part (does nothing when run on its own): a process set up as every server
    /// is, whose non-main thread panics while the main thread would carry on.
    #[test]
    fn panicking_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        super::init();
        let worker = std::thread::Builder::new()
            .name("raft-core".into())
            .spawn(|| panic!("on purpose"))
            .expect("a thread");
        let _ = worker.join();
        println!("still running after the panic");
    }

    #[test]
    fn a_panic_in_any_thread_ends_the_process() {
        let out = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "logging::tests::panicking_child", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("running the child");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{:?}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(!stdout.contains("still running"), "{stdout}");
        assert!(
            stderr.contains("panic, stopping the process: on purpose")
                && stderr.contains("raft-core")
                && stderr.contains("logging.rs"),
            "{stderr}"
        );
    }
}
