//! raft-rs logs through `slog`; this drain hands its records to `tracing` like every other
//! log line of the process.

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};
use std::fmt::Write;

struct ToTracing;

struct Pairs(String);

impl Serializer for Pairs {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for ToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut pairs = Pairs(String::new());
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{}", pairs.0),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{}", pairs.0),
            Level::Info => tracing::info!(target: "raft", "{msg}{}", pairs.0),
            Level::Debug | Level::Trace => tracing::debug!(target: "raft", "{msg}{}", pairs.0),
        }
        Ok(())
    }
}

pub fn logger() -> slog::Logger {
    slog::Logger::root(ToTracing.fuse(), slog::o!())
}
