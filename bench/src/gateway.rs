//! Starting, stopping and restarting `rtgate` processes for a scenario.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::target::Node;

/// How to start gateways.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Path to the `rtgate` binary.
    pub bin: PathBuf,
    /// HS256 secret.
    pub jwt_secret: String,
    /// API key.
    pub api_key: String,
    /// Redis URL for the multi-node engine.
    pub redis: Option<String>,
    /// Unique Redis prefix.
    pub redis_prefix: String,
    /// Extra flags.
    pub extra: Vec<String>,
    /// Lift the per-address, pending and QUIC handshake budgets (every bench client comes
    /// from one loopback address); `false` keeps the gateway's defaults.
    pub lift_limits: bool,
    /// Scratch directory (certificate, logs).
    pub dir: PathBuf,
}

/// A running gateway started by the bench.
pub struct Gateway {
    child: Option<Child>,
    args: Vec<String>,
    spec: Spec,
    log: PathBuf,
    /// How clients reach it.
    pub node: Node,
}

/// Flags that lift the gateway's admission budgets for a loopback load.
const LIFTED_LIMITS: [&str; 14] = [
    "--max-connections-per-ip",
    "0",
    "--max-handshakes-per-ip",
    "0",
    "--max-pending-per-ip",
    "1000000",
    "--max-pending-connections",
    "1000000",
    "--accept-rate",
    "0",
    "--max-handshakes",
    "1000000",
    "--quic-retry",
    "never",
];

fn free_ports() -> std::io::Result<(u16, u16)> {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok((udp.local_addr()?.port(), tcp.local_addr()?.port()))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Gateway {
    /// Starts node `index` and waits until it is ready.
    pub async fn start(spec: &Spec, index: usize) -> Result<Gateway, String> {
        let (wt, http) = free_ports().map_err(|e| e.to_string())?;
        let cert_dir = spec.dir.join("certs");
        let mut args: Vec<String> = vec![
            "--wt-listen".into(),
            format!("127.0.0.1:{wt}"),
            "--http-listen".into(),
            format!("127.0.0.1:{http}"),
            "--cert-dir".into(),
            cert_dir.display().to_string(),
            "--jwt-secret".into(),
            spec.jwt_secret.clone(),
            "--api-key".into(),
            spec.api_key.clone(),
            "--node-id".into(),
            format!("bench-node-{index}"),
            "--drain-timeout".into(),
            "3s".into(),
            "--shutdown-delay".into(),
            "0s".into(),
        ];
        if spec.lift_limits {
            // Every bench client comes from loopback: lift the per-address and pending
            // budgets, pace nothing.
            args.extend(LIFTED_LIMITS.iter().map(|a| a.to_string()));
        }
        if let Some(redis) = &spec.redis {
            args.extend([
                "--redis".into(),
                redis.clone(),
                "--redis-prefix".into(),
                spec.redis_prefix.clone(),
            ]);
        }
        args.extend(spec.extra.iter().cloned());
        let node = Node {
            wt_url: format!("https://127.0.0.1:{wt}/wt"),
            ws_url: format!("ws://127.0.0.1:{http}/ws"),
            api_url: format!("http://127.0.0.1:{http}"),
            cert_hex: None,
        };
        let mut gw = Gateway {
            child: None,
            args,
            spec: spec.clone(),
            log: spec.dir.join(format!("rtgate-{index}.log")),
            node,
        };
        gw.spawn().await?;
        let hash: serde_json::Value = reqwest::get(format!("{}/dev/cert-hash", gw.node.api_url))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        gw.node.cert_hex = hash["hex"].as_str().map(str::to_string);
        Ok(gw)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.spec.bin)
            .args(&self.args)
            .env("RTGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.spec.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/readyz", self.node.api_url);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("rtgate exited with {status}; see {}", self.log.display()));
            }
            if Instant::now() > deadline {
                return Err(format!("rtgate not ready in 30 s; see {}", self.log.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends `sig` and waits (≤ 15 s, then SIGKILL) for the process to exit.
    pub async fn stop(&mut self, sig: i32) -> Duration {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        signal(child.id(), sig);
        let deadline = started + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    /// Stops with `sig` and starts again on the same ports and certificate. Returns the
    /// stop and start durations.
    pub async fn restart(&mut self, sig: i32) -> Result<(Duration, Duration), String> {
        let stop = self.stop(sig).await;
        let started = Instant::now();
        // The old sockets may linger a moment; retry binding for a few seconds.
        let mut tries = 0;
        loop {
            match self.spawn().await {
                Ok(()) => break,
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing_free_log(&e);
                    self.child = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((stop, started.elapsed()))
    }
}

fn tracing_free_log(e: &str) {
    eprintln!("rtgate-bench: restart attempt failed: {e}");
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
