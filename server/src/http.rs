//! The HTTP listener (WebSocket upgrades, the server API, health): an accept loop that
//! holds each client address to its share of connections, paces new connections, and
//! keeps serving what it has when the process runs out of file descriptors; each
//! connection is served by hyper with a deadline for its request headers, so a client that
//! opens a socket and sends nothing (or one byte at a time) is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{AcceptPacer, AddressSlot, AddressSlots};

/// The client behind a request: its address and its connection's slot, which a WebSocket
/// keeps for as long as it lives.
#[derive(Debug, Clone)]
pub struct ClientConn {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The connection's place in the per-address budget.
    pub slot: Arc<AddressSlot>,
}

/// Limits of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// Paces accepts.
    pub pacer: Arc<AcceptPacer>,
    /// Open connections per client address.
    pub slots: Arc<AddressSlots>,
}

/// Errors of `accept` that mean the process (or system) is out of descriptors or memory:
/// back off and keep serving the connections already open.
fn is_resource_exhaustion(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc_codes::EMFILE | libc_codes::ENFILE | libc_codes::ENOBUFS | libc_codes::ENOMEM)
    )
}

/// errno values (Linux and the BSDs agree on these).
mod libc_codes {
    pub const EMFILE: i32 = 24;
    pub const ENFILE: i32 = 23;
    pub const ENOBUFS: i32 = 105;
    pub const ENOMEM: i32 = 12;
}

/// Binds a TCP listener with a backlog deep enough for connection bursts.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting and gives
/// open HTTP connections a few seconds to finish (upgraded WebSockets are the node's).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut exhausted_logged = false;
    loop {
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_resource_exhaustion(&err) => {
                if !exhausted_logged {
                    tracing::warn!(%err, "cannot accept: out of descriptors; backing off");
                    exhausted_logged = true;
                }
                metrics::counter!("rtgate_accept_errors_total", "reason" => "exhausted").increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(err) => {
                tracing::debug!(%err, "accept failed");
                continue;
            }
        };
        exhausted_logged = false;
        let Some(slot) = limits.slots.acquire(addr.ip()) else {
            metrics::counter!("rtgate_connections_refused_total", "reason" => "per_ip").increment(1);
            drop(tcp);
            continue;
        };
        // Paced after the per-address check: connections refused at once cost no share of
        // the rate, so one address over its budget cannot slow everyone else's accepts.
        limits.pacer.ready().await;
        // Frames are small and latency matters: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let client = ClientConn { addr, slot };
        let service =
            tower::ServiceExt::map_request(app.clone(), move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(client.clone());
                req
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(
                TokioIo::new(tcp),
                hyper_util::service::TowerToHyperService::new(service),
            )
            .with_upgrades();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
            };
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(Duration::from_secs(3), conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(err) = result {
                tracing::trace!(%err, "http connection ended");
            }
        });
    }
}
