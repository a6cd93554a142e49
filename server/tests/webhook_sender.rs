//! One delivery attempt against real HTTP receivers on loopback: signed like Chatwoot,
//! statuses and `Retry-After` read, redirects not followed, hanging receivers cut at the
//! timeout, and internal addresses refused unless private networks are allowed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rtgate_server::delivery::policy::Outcome;
use rtgate_server::delivery::sender::Sender;
use rtgate_server::delivery::signing;
use rtgate_server::delivery::ssrf::Guard;

const SECRET: &[u8] = b"webhook-secret";

#[derive(Default)]
struct Seen {
    verified: AtomicUsize,
    redirect_followed: AtomicUsize,
}

async fn receiver() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let s2 = seen.clone();
    let app = Router::new()
        .route(
            "/ok",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = s.clone();
                async move {
                    let ts: u64 = headers[signing::TIMESTAMP_HEADER]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let sig = headers[signing::SIGNATURE_HEADER].to_str().unwrap();
                    assert!(headers.contains_key(signing::DELIVERY_HEADER));
                    if signing::verify(SECRET, ts, &body, sig) {
                        seen.verified.fetch_add(1, Ordering::Relaxed);
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }
            }),
        )
        .route("/fail", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/bad", post(|| async { StatusCode::BAD_REQUEST }))
        .route(
            "/busy",
            post(|| async { (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")]).into_response() }),
        )
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/target")]).into_response() }),
        )
        .route(
            "/target",
            get(move || {
                let seen = s2.clone();
                async move {
                    seen.redirect_followed.fetch_add(1, Ordering::Relaxed);
                    StatusCode::OK
                }
            })
            .post(|| async { StatusCode::OK }),
        )
        .route(
            "/hang",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/huge",
            post(|| async { Response::new(axum::body::Body::from(vec![b'x'; 8 << 20])) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn signed(body: &[u8]) -> Vec<(&'static str, String)> {
    signing::headers(Some("delivery-1"), Some(SECRET), 1_700_000_000, body)
}

#[tokio::test]
async fn attempts_report_what_the_endpoint_answered() {
    let (addr, seen) = receiver().await;
    let sender = Sender::new(Guard { allow_private: true }, Duration::from_millis(500));
    let body = Bytes::from_static(br#"{"event":"message_created"}"#);
    let url = |path: &str| format!("http://{addr}{path}");
    let status = |code| Outcome::Status {
        code,
        retry_after: None,
    };

    assert_eq!(
        sender.send(&url("/ok"), &signed(&body), body.clone()).await,
        status(200)
    );
    assert_eq!(
        seen.verified.load(Ordering::Relaxed),
        1,
        "the receiver verified the signature"
    );
    assert_eq!(
        sender.send(&url("/fail"), &signed(&body), body.clone()).await,
        status(500)
    );
    assert_eq!(
        sender.send(&url("/bad"), &signed(&body), body.clone()).await,
        status(400)
    );
    assert_eq!(
        sender.send(&url("/busy"), &signed(&body), body.clone()).await,
        Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(
        sender.send(&url("/moved"), &signed(&body), body.clone()).await,
        status(302)
    );
    assert_eq!(
        seen.redirect_followed.load(Ordering::Relaxed),
        0,
        "redirects are not followed"
    );
    let started = std::time::Instant::now();
    assert_eq!(
        sender.send(&url("/hang"), &signed(&body), body.clone()).await,
        Outcome::Timeout
    );
    assert!(started.elapsed() < Duration::from_secs(5), "cut at the timeout");
    // An 8 MiB answer: the status is read, the body only up to the cap.
    assert_eq!(
        sender.send(&url("/huge"), &signed(&body), body.clone()).await,
        status(200)
    );
    let gone = format!("http://127.0.0.1:{}/ok", free_port());
    assert!(matches!(
        sender.send(&gone, &signed(&body), body.clone()).await,
        Outcome::Connect(_)
    ));
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn internal_destinations_are_refused_without_the_allow_flag() {
    let (addr, seen) = receiver().await;
    let sender = Sender::new(Guard::default(), Duration::from_millis(500));
    let body = Bytes::from_static(b"{}");
    for url in [
        format!("http://{addr}/ok"),
        format!("http://localhost:{}/ok", addr.port()),
        format!("http://[::1]:{}/ok", addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/hook".to_string(),
        "ftp://example.com/hook".to_string(),
    ] {
        let outcome = sender.send(&url, &signed(&body), body.clone()).await;
        assert!(matches!(outcome, Outcome::Forbidden(_)), "{url}: {outcome:?}");
    }
    assert_eq!(
        seen.verified.load(Ordering::Relaxed),
        0,
        "nothing reached the receiver"
    );
}
