//! The coordinator's side of the worker processes.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::worker::{Command, Plan, Report, Status, decode_histogram, new_histogram};

struct Handle {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Handle {
    async fn send<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), String> {
        let mut line = serde_json::to_string(msg).map_err(|e| e.to_string())?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("worker stdin: {e}"))
    }

    async fn recv(&mut self, timeout: Duration) -> Result<Report, String> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .map_err(|_| "worker did not answer in time".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("worker exited")?;
        serde_json::from_str(&line).map_err(|e| format!("worker said {line:?}: {e}"))
    }
}

/// Every worker, connected.
pub struct Workers {
    handles: Vec<Handle>,
    /// Connections established.
    pub connected: u64,
    /// Connections failed.
    pub failed: u64,
    /// Longest connect phase, s.
    pub connect_secs: f64,
    /// Subscribed members per room.
    pub members: HashMap<u64, u32>,
    /// Error samples.
    pub errors: Vec<String>,
    /// Workers' RSS after connecting, KiB.
    pub rss_kb: u64,
}

/// Merged snapshot.
pub struct Snapshot {
    /// Unique deliveries.
    pub received: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Latency, µs.
    pub hist: Histogram<u64>,
    /// Summed counters.
    pub status: Status,
    /// Workers' RSS, KiB.
    pub rss_kb: u64,
}

fn add_status(a: &mut Status, b: &Status) {
    a.connected_now += b.connected_now;
    a.down += b.down;
    a.disconnects += b.disconnects;
    a.resumed_ok += b.resumed_ok;
    a.recovery_failed += b.recovery_failed;
    a.last_back_us = a.last_back_us.max(b.last_back_us);
}

impl Workers {
    /// Spawns `workers` processes sharing `total` connections, and waits (≤ `bound`) until
    /// each has finished connecting.
    pub async fn start(
        template: &Plan,
        total: u64,
        workers: usize,
        bound: Duration,
    ) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let workers = workers.clamp(1, total.max(1) as usize);
        let mut handles = Vec::new();
        let per = total.div_ceil(workers as u64);
        for w in 0..workers as u64 {
            let first = w * per;
            let count = per.min(total.saturating_sub(first));
            if count == 0 {
                break;
            }
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("spawning worker: {e}"))?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let mut h = Handle {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            };
            let plan = Plan {
                first,
                count,
                ..template.clone()
            };
            h.send(&plan).await?;
            handles.push(h);
        }
        let mut out = Workers {
            handles: Vec::new(),
            connected: 0,
            failed: 0,
            connect_secs: 0.0,
            members: HashMap::new(),
            errors: Vec::new(),
            rss_kb: 0,
        };
        for mut h in handles {
            match h.recv(bound).await? {
                Report::Ready {
                    connected,
                    failed,
                    connect_secs,
                    members,
                    errors,
                    rss_kb,
                } => {
                    out.connected += connected;
                    out.failed += failed;
                    out.connect_secs = out.connect_secs.max(connect_secs);
                    for (room, n) in members {
                        *out.members.entry(room).or_default() += n;
                    }
                    out.errors.extend(errors);
                    out.rss_kb += rss_kb;
                }
                other => return Err(format!("unexpected worker report {other:?}")),
            }
            out.handles.push(h);
        }
        Ok(out)
    }

    /// Deliveries and latency since the last reset.
    pub async fn snapshot(&mut self, reset: bool) -> Result<Snapshot, String> {
        for h in &mut self.handles {
            h.send(&Command::Snapshot { reset }).await?;
        }
        let mut snap = Snapshot {
            received: 0,
            duplicates: 0,
            hist: new_histogram(),
            status: Status::default(),
            rss_kb: 0,
        };
        for h in &mut self.handles {
            match h.recv(Duration::from_secs(30)).await? {
                Report::Snapshot {
                    received,
                    duplicates,
                    hist,
                    status,
                    rss_kb,
                } => {
                    snap.received += received;
                    snap.duplicates += duplicates;
                    snap.hist
                        .add(decode_histogram(&hist)?)
                        .map_err(|e| format!("{e:?}"))?;
                    add_status(&mut snap.status, &status);
                    snap.rss_kb += rss_kb;
                }
                other => return Err(format!("unexpected worker report {other:?}")),
            }
        }
        Ok(snap)
    }

    /// Summed connection counters.
    pub async fn status(&mut self) -> Result<Status, String> {
        for h in &mut self.handles {
            h.send(&Command::Status).await?;
        }
        let mut sum = Status::default();
        for h in &mut self.handles {
            match h.recv(Duration::from_secs(30)).await? {
                Report::Status(s) => add_status(&mut sum, &s),
                other => return Err(format!("unexpected worker report {other:?}")),
            }
        }
        Ok(sum)
    }

    /// Closes every client and waits (bounded) for the workers to exit.
    pub async fn close(mut self) {
        for h in &mut self.handles {
            let _ = h.send(&Command::Close).await;
        }
        for h in &mut self.handles {
            let _ = h.recv(Duration::from_secs(10)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), h.child.wait()).await;
        }
    }

    /// Worker process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.handles.iter().filter_map(|h| h.child.id()).collect()
    }

    /// Expected deliveries for the room-events published per room.
    pub fn expected(&self, per_room: &[u64]) -> u64 {
        per_room
            .iter()
            .enumerate()
            .map(|(room, n)| n * u64::from(*self.members.get(&(room as u64)).unwrap_or(&0)))
            .sum()
    }
}
