//! `--metrics ADDR`: the library's metrics (see `grapevine::metrics`) in
//! Prometheus text format at `http://ADDR/metrics`.
//!
//! The page is served here rather than by the exporter's own listener,
//! which would bring hyper for one GET: a request is read (at most 8 KiB,
//! within 2 s), answered and the connection closed, at most 64 at a time
//! (more are closed unanswered: idle connections cannot hold the page for
//! longer than 2 s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Histogram buckets of the `_seconds` metrics (sync and repair times).
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: usize = 64;

/// The `--metrics` flag of `pub`, `sub` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MetricsArgs {
    /// Serve metrics in Prometheus text format at http://ADDR/metrics
    /// (e.g. 127.0.0.1:9464; port 0 picks a free one, printed on standard
    /// error). Every name starts with `grapevine_`. Listening on anything
    /// but a loopback address shows them to the network.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts serving, if asked.
    pub(crate) async fn start(&self) -> Result<()> {
        if let Some(addr) = self.metrics {
            serve(addr).await?;
        }
        Ok(())
    }
}

/// Installs the Prometheus recorder and serves its page on `addr`.
/// Returns the address bound (with port 0, the one the system chose),
/// which it also prints on standard error.
pub(crate) async fn serve(addr: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("--metrics {addr}: cannot listen there (is the port taken, or the address not this host's?)")
    })?;
    let bound = listener.local_addr()?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    grapevine::metrics::describe();
    say!("metrics: http://{bound}/metrics");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                // Out of descriptors, say: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue; // Too many at once: this one is closed unanswered.
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, &handle)).await;
                drop(slot);
            });
        }
    });
    Ok(bound)
}

/// Reads one request and answers it.
async fn answer(mut conn: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !ends_head(&buf) {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head_only = buf.starts_with(b"HEAD ");
    let (status, mut body) = respond(&buf, || handle.render());
    let len = body.len();
    if head_only {
        body.clear();
    }
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// Whether `buf` holds a whole request head (lines ending in CRLF, or LF
/// alone as lenient clients send).
fn ends_head(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// The status line and body for a request.
fn respond(request: &[u8], render: impl FnOnce() -> String) -> (&'static str, String) {
    let line = request
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET" | b"HEAD"), Some(b"/metrics")) => ("200 OK", render()),
        (Some(b"GET" | b"HEAD"), Some(_)) => ("404 Not Found", "not found: try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "only GET (or HEAD) /metrics is served\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_answered_with_the_page() {
        let page = || "grapevine_x 1\n".to_owned();
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", page),
            ("200 OK", "grapevine_x 1\n".into())
        );
        assert_eq!(
            respond(b"GET /metrics?a=1 HTTP/1.0\r\n\r\n", page).0,
            "200 OK"
        );
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", page).0, "404 Not Found");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", page).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"", page).0, "405 Method Not Allowed");
        assert_eq!(respond(&[0xff; 40], page).0, "405 Method Not Allowed");
        assert_eq!(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", page).0, "200 OK");
        assert_eq!(respond(b"GET /metrics HTTP/1.0\n\n", page).0, "200 OK");
    }

    #[test]
    fn a_head_ends_at_a_blank_line_with_or_without_carriage_returns() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\n"));
    }
}
