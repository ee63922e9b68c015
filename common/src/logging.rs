//! Structured logs for every process: `RUST_LOG` filters (default `info`), and
//! `LATTICE_LOG_FORMAT=json` switches to one JSON object per line for log collectors.

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_with("info");
}

/// Like [`init`], with another level for when `RUST_LOG` is not set.
pub fn init_with(default_level: &str) {
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
