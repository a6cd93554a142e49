//! The `rtgate` binary as a child process, for what only a process shows: being killed,
//! signals, descriptor limits.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{API_KEY, SECRET};

/// A gateway process on fresh loopback ports.
pub struct GatewayProcess {
    pub child: Child,
    pub http_addr: SocketAddr,
    pub wt_addr: SocketAddr,
    _certs: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `rtgate` with the test credentials and `extra` flags; `shell_prefix` runs
    /// before it in a shell (e.g. `ulimit -n 64;`). Waits until `/healthz` answers.
    pub async fn start(extra: &[&str], shell_prefix: &str) -> Self {
        let certs = tempfile::tempdir().unwrap();
        let http_port = super::redis::free_tcp_port();
        let wt_port = super::redis::free_udp_port();
        let http_addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
        let wt_addr: SocketAddr = format!("127.0.0.1:{wt_port}").parse().unwrap();
        let mut args = vec![
            "--http-listen".to_string(),
            http_addr.to_string(),
            "--wt-listen".into(),
            wt_addr.to_string(),
            "--cert-dir".into(),
            certs.path().display().to_string(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--api-key".into(),
            API_KEY.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "{shell_prefix} exec '{}' {}",
            env!("CARGO_BIN_EXE_rtgate"),
            quoted.join(" ")
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("RTGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rtgate starts");
        let process = GatewayProcess {
            child,
            http_addr,
            wt_addr,
            _certs: certs,
        };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http.get(process.url("/healthz")).send().await
                && r.status() == 200
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("rtgate did not start");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http_addr)
    }

    /// Sends a signal (`libc`-free: through `kill`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
