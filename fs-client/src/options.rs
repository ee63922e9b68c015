//! Mount options, given as `-o a,b=c` the way mount(8) and /etc/fstab pass them.

use fuser::MountOption;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug)]
pub struct Options {
    /// Directory with the mount's ca.pem, cert.pem and key.pem.
    pub certs: Option<PathBuf>,
    /// Where a background mount writes its log.
    pub log: Option<PathBuf>,
    pub attr_timeout: Duration,
    pub write_buffer: u64,
    pub flush_after: Duration,
    /// How long a read or write waits for enough chunkservers before it fails.
    pub io_wait: Duration,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Options handed to the kernel.
    pub mount: Vec<MountOption>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            certs: None,
            log: None,
            attr_timeout: Duration::from_secs(1),
            write_buffer: 32 << 20,
            flush_after: Duration::from_secs(5),
            io_wait: Duration::from_secs(60),
            metrics: None,
            // The source (what `findmnt` and `df` show) is the metaserver list mounted,
            // unless `fsname=` says otherwise: see [`Options::name_source`].
            mount: vec![
                MountOption::Subtype("latticefs".into()),
                MountOption::DefaultPermissions,
            ],
        }
    }
}

/// Parses `1024`, `64k`, `32M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{s:?} seconds is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Options {
    /// Names the mount after `source` (the metaserver addresses it was given, as MooseFS
    /// shows `mfs#host:port`) unless an `fsname=` option named it. Without root, the name
    /// goes to fusermount3 inside an option list, where a comma must be escaped.
    pub fn name_source(&mut self, source: &str, root: bool) {
        if self
            .mount
            .iter()
            .any(|m| matches!(m, MountOption::FSName(_)))
        {
            return;
        }
        let name = match root {
            true => source.to_string(),
            false => source.replace(',', "\\,"),
        };
        self.mount.push(MountOption::FSName(name));
    }

    /// Applies a comma-separated option list (repeatable).
    pub fn apply(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let need = || value.ok_or_else(|| format!("mount option {key} needs a value"));
            match key {
                "certs" => self.certs = Some(PathBuf::from(need()?)),
                "log" => self.log = Some(PathBuf::from(need()?)),
                "attr_timeout" => self.attr_timeout = seconds(need()?)?,
                "flush_after" => self.flush_after = seconds(need()?)?,
                "io_wait" => self.io_wait = seconds(need()?)?,
                "metrics" => {
                    let addr = need()?;
                    let parsed = addr
                        .parse()
                        .map_err(|_| format!("metrics={addr}: not an IP:PORT"));
                    self.metrics = Some(parsed?);
                }
                "write_buffer" => {
                    let size = parse_size(need()?)?;
                    if !(4096..=(1 << 30)).contains(&size) {
                        return Err("write_buffer must be between 4k and 1G".into());
                    }
                    self.write_buffer = size;
                }
                "fsname" => {
                    self.mount.retain(|m| !matches!(m, MountOption::FSName(_)));
                    self.mount.push(MountOption::FSName(need()?.to_string()));
                }
                "allow_other" => self.mount.push(MountOption::AllowOther),
                "allow_root" => self.mount.push(MountOption::AllowRoot),
                "ro" => self.mount.push(MountOption::RO),
                "rw" => self.mount.push(MountOption::RW),
                "dev" => self.mount.push(MountOption::Dev),
                "nodev" => self.mount.push(MountOption::NoDev),
                "suid" => self.mount.push(MountOption::Suid),
                "nosuid" => self.mount.push(MountOption::NoSuid),
                "exec" => self.mount.push(MountOption::Exec),
                "noexec" => self.mount.push(MountOption::NoExec),
                "atime" => self.mount.push(MountOption::Atime),
                "noatime" => self.mount.push(MountOption::NoAtime),
                "sync" => self.mount.push(MountOption::Sync),
                "async" => self.mount.push(MountOption::Async),
                "dirsync" => self.mount.push(MountOption::DirSync),
                // Always on: the kernel checks permissions (and ACLs) from our attributes.
                "default_permissions" => {}
                // fstab bookkeeping that mount(8) may pass along.
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "nofail"
                | "_netdev" => {}
                k if k.starts_with("x-") || k.starts_with("comment=") => {}
                _ => return Err(format!("unknown mount option {opt:?}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_rejects_unknown_ones() {
        let mut o = Options::default();
        o.apply("rw,certs=/etc/lattice/c,allow_other,write_buffer=8M,attr_timeout=0.5,_netdev")
            .unwrap();
        assert_eq!(
            o.certs.as_deref(),
            Some(std::path::Path::new("/etc/lattice/c"))
        );
        assert_eq!(o.write_buffer, 8 << 20);
        assert_eq!(o.attr_timeout, Duration::from_millis(500));
        assert!(o.mount.contains(&MountOption::AllowOther));
        assert!(o.apply("bogus").is_err());
        assert!(o.apply("certs").is_err());
        assert!(o.apply("write_buffer=12q").is_err());
        assert_eq!(parse_size("64k"), Ok(65536));
    }

    #[test]
    fn the_mount_is_named_after_its_metaservers_unless_told_otherwise() {
        let fsname = |o: &Options| {
            o.mount.iter().find_map(|m| match m {
                MountOption::FSName(n) => Some(n.clone()),
                _ => None,
            })
        };
        let mut o = Options::default();
        o.name_source("10.0.0.1:7101,10.0.0.2:7101", true);
        assert_eq!(fsname(&o).as_deref(), Some("10.0.0.1:7101,10.0.0.2:7101"));
        let mut o = Options::default();
        o.name_source("10.0.0.1:7101,10.0.0.2:7101", false);
        assert_eq!(fsname(&o).as_deref(), Some("10.0.0.1:7101\\,10.0.0.2:7101"));
        let mut o = Options::default();
        o.apply("fsname=archive").unwrap();
        o.name_source("10.0.0.1:7101", true);
        assert_eq!(fsname(&o).as_deref(), Some("archive"));
    }
}
