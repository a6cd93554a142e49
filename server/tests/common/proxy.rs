//! A TCP proxy in front of Redis that can make the pub/sub connections passing through it
//! go quiet — open, but delivering nothing — as a connection left on an old primary after
//! a failover does.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One proxied connection: whether it subscribed, and whether it is silenced.
#[derive(Default)]
struct Link {
    subscriber: AtomicBool,
    silenced: AtomicBool,
}

pub struct QuietingProxy {
    pub port: u16,
    links: Arc<std::sync::Mutex<Vec<Arc<Link>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl QuietingProxy {
    /// Proxies 127.0.0.1:<port> to `target` (host:port).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<std::sync::Mutex<Vec<Arc<Link>>>> = Default::default();
        let target = target.to_string();
        let all = links.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let link = Arc::new(Link::default());
                all.lock().unwrap().push(link.clone());
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let up = link.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if String::from_utf8_lossy(&buf[..n])
                            .to_ascii_uppercase()
                            .contains("SUBSCRIBE")
                        {
                            up.subscriber.store(true, Ordering::SeqCst);
                        }
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = server_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // Silenced: read and dropped, the socket stays open.
                        if link.silenced.load(Ordering::SeqCst) {
                            continue;
                        }
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        QuietingProxy { port, links, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Silences every pub/sub connection open now (later ones are left alone); how many.
    pub fn silence_subscribers(&self) -> usize {
        let links = self.links.lock().unwrap();
        let mut n = 0;
        for l in links.iter().filter(|l| l.subscriber.load(Ordering::SeqCst)) {
            l.silenced.store(true, Ordering::SeqCst);
            n += 1;
        }
        n
    }
}

impl Drop for QuietingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
