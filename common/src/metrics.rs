//! Prometheus metrics over plain HTTP: each process may serve `GET /metrics` (text format
//! 0.0.4) on an address its admin chooses. The exposition is built fresh per scrape from
//! the process's own state, so there is no registry to keep in sync.

use futures::future::BoxFuture;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// Largest request head read from a scraper.
const MAX_REQUEST: usize = 8 << 10;
/// A scraper that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Text in the Prometheus exposition format.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

/// A metric read off each of several records: name, help, kind, and the reading.
pub type Field<T> = (&'static str, &'static str, Kind, fn(&T) -> u64);

/// One labelled sample: label pairs and the value.
pub type Sample<'a> = (Vec<(&'a str, String)>, f64);

impl Exposition {
    /// A metric with several labelled samples.
    pub fn metric(&mut self, name: &str, help: &str, kind: Kind, samples: &[Sample<'_>]) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            match labels.is_empty() {
                true => {
                    let _ = writeln!(self.text, "{name} {value}");
                }
                false => {
                    let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
                }
            }
        }
    }

    /// A metric with one unlabelled sample.
    pub fn one(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.metric(name, help, kind, &[(Vec::new(), value)]);
    }

    /// Several unlabelled metrics: (name, help, kind, value) each.
    pub fn ones(&mut self, rows: &[(&str, &str, Kind, f64)]) {
        for &(name, help, kind, value) in rows {
            self.one(name, help, kind, value);
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A counter shared by the tasks that bump it and the exposition that reads it.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64
    }
}

pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// Binds `addr` and serves `render()` on `GET /metrics` until the process ends.
pub async fn serve(addr: SocketAddr, render: Render) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = render.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, render).await {
                    warn!(%peer, "metrics request failed: {e}");
                }
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: tokio::net::TcpStream, render: Render) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(IDLE, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("request head not sent in time"))??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(b"/metrics")) => respond(&mut stream, "200 OK", &render().await).await,
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "try /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut e = Exposition::default();
        e.one("lattice_up", "Whether it runs.", Kind::Gauge, 1.0);
        e.metric(
            "lattice_bytes_total",
            "Bytes.",
            Kind::Counter,
            &[(vec![("disk", "/a\"b".to_string())], 42.0)],
        );
        let text = e.finish();
        assert!(text.contains("# TYPE lattice_up gauge\nlattice_up 1\n"));
        assert!(text.contains("lattice_bytes_total{disk=\"/a\\\"b\"} 42\n"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let render: Render = Arc::new(|| Box::pin(async { "x 1\n".to_string() }));
        serve(addr, render).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("\r\n\r\nx 1\n"), "{out}");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }
}
