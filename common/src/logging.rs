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
