//! `grapevine bench --relay quic|tcp`: a relay pair, as two `grapevine
//! relay` processes, between the publisher's group and the subscribers'.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchArgs;

/// The relay link of `--relay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RelayArg {
    /// QUIC.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
}

/// The two relay processes.
pub(crate) struct Relays {
    far: Child,
    near: Child,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Relays {
    /// Starts the far relay (listening on 127.0.0.1, emitting on `far_port`
    /// of the same group), then the near one (reading `--port`), and waits
    /// until their link is up.
    pub(crate) async fn start(args: &BenchArgs, link: RelayArg, far_port: u16) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the grapevine executable")?;
        let n = &args.net;
        let tcp = (link == RelayArg::Tcp).then_some("--tcp");
        let mut far = Command::new(&exe)
            .args(["relay", "--listen", "127.0.0.1:0", "--allow-any-feeder"])
            .args(["--to-group", &format!("{}:{far_port}", group(n.group))])
            .arg(format!("--interface={}", n.interface))
            .args(["--ttl", &n.ttl.to_string()])
            .args(tcp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the far relay")?;
        let stderr = far.stderr.take().context("the far relay has no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let (mut fingerprint, mut listening) = (None, None);
        while fingerprint.is_none() || listening.is_none() {
            let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
                .await
                .context("the far relay did not start in time")??
                .context("the far relay exited at start")?;
            if let Some(f) = line.strip_prefix("fingerprint:") {
                fingerprint = Some(f.trim().to_owned());
            } else if let Some(a) = line.strip_prefix("listening:") {
                listening = Some(a.trim().to_owned());
            }
        }
        // Its later log lines are not read: drain them.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (Some(fingerprint), Some(listening)) = (fingerprint, listening) else {
            bail!("the far relay said no fingerprint or address");
        };
        let mut near = Command::new(&exe)
            .args([
                "relay",
                "--from-group",
                &format!("{}:{}", group(n.group), n.port),
            ])
            .arg(format!("--interface={}", n.interface))
            .args(["--to", &listening, "--pin", &fingerprint, "--stats", "0.05"])
            .args(tcp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the near relay")?;
        let stdout = near.stdout.take().context("the near relay has no stdout")?;
        let mut stats = BufReader::new(stdout).lines();
        loop {
            let line = tokio::time::timeout(READY_TIMEOUT, stats.next_line())
                .await
                .context("the relays did not link in time")??
                .context("the near relay exited at start")?;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if v["links_up"] == 1 {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = stats.next_line().await {} });
        Ok(Self { far, near })
    }

    /// Stops both.
    pub(crate) async fn stop(mut self) {
        let _ = self.near.kill().await;
        let _ = self.far.kill().await;
    }
}

/// The group as `GROUP:PORT` wants it (IPv6 in brackets).
fn group(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
