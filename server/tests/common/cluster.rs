//! A Redis Cluster of the test's own: `redis-server` masters on free loopback ports,
//! joined by `redis-cli --cluster create`, killed on drop. A master can be killed and
//! started again (empty, with its slots: its cluster configuration file is kept).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis::free_tcp_port;

/// One master.
struct Master {
    port: u16,
    bus_port: u16,
    /// The port it tells clients to use (a proxy in front of it, or its own).
    announce: u16,
    child: Option<Child>,
}

pub struct PrivateCluster {
    dir: tempfile::TempDir,
    masters: Vec<Master>,
}

impl PrivateCluster {
    /// A cluster of `masters` masters (no replicas), ready (`cluster_state:ok` everywhere).
    pub async fn start(masters: usize) -> Self {
        Self::start_announcing(masters, &[]).await
    }

    /// As `start`, with master `i` announcing `announce[i]` (when given) as its port: clients
    /// then reach it through whatever listens there (a proxy forwarding to `port(i)`).
    /// `ports[i]` are the masters' ports, chosen by the caller with `free_tcp_port`.
    pub async fn start_with_ports(ports: &[u16], announce: &[Option<u16>]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cluster = PrivateCluster {
            dir,
            masters: ports
                .iter()
                .enumerate()
                .map(|(i, &port)| Master {
                    port,
                    bus_port: free_tcp_port(),
                    announce: announce.get(i).copied().flatten().unwrap_or(port),
                    child: None,
                })
                .collect(),
        };
        for i in 0..cluster.masters.len() {
            cluster.spawn(i).await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for m in &cluster.masters {
            create.arg(format!("127.0.0.1:{}", m.port));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Off the test's runtime: a proxy in front of a master runs on it.
        let status = tokio::task::spawn_blocking(move || create.status())
            .await
            .unwrap()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create");
        cluster.wait_ok().await;
        cluster
    }

    async fn start_announcing(masters: usize, announce: &[Option<u16>]) -> Self {
        let ports: Vec<u16> = (0..masters).map(|_| free_tcp_port()).collect();
        Self::start_with_ports(&ports, announce).await
    }

    async fn spawn(&mut self, i: usize) {
        let m = &self.masters[i];
        let conf = self.dir.path().join(format!("nodes-{}.conf", m.port));
        let child = Command::new("redis-server")
            .args(["--port", &m.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &m.bus_port.to_string(),
            ])
            .arg("--cluster-config-file")
            .arg(&conf)
            .args(["--cluster-announce-port", &m.announce.to_string()])
            .args(["--cluster-node-timeout", "2000"])
            // The other masters keep serving their slots while one is down.
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let port = m.port;
        self.masters[i].child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start");
    }

    /// Waits until every running master reports `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        for _ in 0..600 {
            let mut all = true;
            for m in self.masters.iter().filter(|m| m.child.is_some()) {
                let info = Self::cmd_at(m.port, &["CLUSTER", "INFO"]).await;
                let text = match info {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Some(redis::Value::VerbatimString { text, .. }) => text,
                    _ => String::new(),
                };
                if !text.contains("cluster_state:ok") {
                    all = false;
                }
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the redis cluster did not become ready");
    }

    /// The seed URLs, comma-separated, as `--redis` takes them with `--redis-cluster`.
    pub fn url(&self) -> String {
        self.masters
            .iter()
            .map(|m| format!("redis://127.0.0.1:{}", m.announce))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many masters.
    pub fn len(&self) -> usize {
        self.masters.len()
    }

    /// Master `i`'s own port.
    pub fn port(&self, i: usize) -> u16 {
        self.masters[i].port
    }

    /// Kills master `i` (its data is gone).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.masters[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts master `i` again on its port, empty, holding its slots as before.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i).await;
        self.wait_ok().await;
    }

    /// Runs a command on master `i`.
    pub async fn cmd(&self, i: usize, args: &[&str]) -> redis::Value {
        Self::cmd_at(self.masters[i].port, args)
            .await
            .expect("the master answers")
    }

    /// The master (index) serving `key`'s slot.
    pub async fn master_of(&self, key: &str) -> usize {
        let slot: i64 = match self.cmd(0, &["CLUSTER", "KEYSLOT", key]).await {
            redis::Value::Int(n) => n,
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        };
        for i in 0..self.masters.len() {
            let ranges = self.cmd(i, &["CLUSTER", "SLOTS"]).await;
            if let redis::Value::Array(ranges) = ranges {
                for r in ranges {
                    let redis::Value::Array(parts) = r else { continue };
                    if let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(node)) =
                        (&parts[0], &parts[1], &parts[2])
                        && (*a..=*b).contains(&slot)
                        && let Some(redis::Value::Int(port)) = node.get(1)
                    {
                        return self
                            .masters
                            .iter()
                            .position(|m| i64::from(m.announce) == *port)
                            .expect("a master of this cluster");
                    }
                }
                break;
            }
        }
        panic!("no master serves {key}");
    }

    async fn cmd_at(port: u16, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn =
            tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
                .await
                .ok()?
                .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
            .await
            .ok()?
            .ok()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for i in 0..self.masters.len() {
            self.kill(i);
        }
    }
}
