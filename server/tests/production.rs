//! Production mode refuses what would be unsafe or would fail later: short API keys,
//! expired certificates, a key that is not the certificate's; it serves no development
//! endpoints; development mode keeps its generated key private.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rtgate_server::{Gateway, StartError};

/// A self-signed certificate valid between the given dates, and its key, as PEM files.
fn cert_files(
    dir: &Path,
    name: &str,
    from: (i32, u8, u8),
    until: (i32, u8, u8),
) -> (PathBuf, PathBuf, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{name}-cert.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, key)
}

fn production(cert: &Path, key: &Path) -> rtgate_server::Config {
    let mut c = config();
    c.production = true;
    c.cert = Some(cert.to_path_buf());
    c.key = Some(key.to_path_buf());
    c.api_key = Some("a-production-key-of-enough-length".into());
    c
}

async fn refusal(config: rtgate_server::Config) -> StartError {
    match Gateway::start(config).await {
        Ok(_) => panic!("started"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn production_refuses_short_keys_expired_and_mismatched_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = cert_files(dir.path(), "good", (2020, 1, 1), (2099, 1, 1));
    let mut short = production(&cert, &key);
    short.api_key = Some("short".into());
    let err = refusal(short).await.to_string();
    assert!(err.contains("at least 24"), "{err}");

    let (old_cert, old_key, _) = cert_files(dir.path(), "old", (2020, 1, 1), (2021, 1, 1));
    let err = refusal(production(&old_cert, &old_key)).await;
    assert!(
        matches!(err, StartError::Cert(rtgate_server::certs::CertError::Expired(_))),
        "{err}"
    );

    let (_, other_key, _) = cert_files(dir.path(), "other", (2020, 1, 1), (2099, 1, 1));
    let err = refusal(production(&cert, &other_key)).await;
    assert!(
        matches!(
            err,
            StartError::Cert(rtgate_server::certs::CertError::Mismatch(_))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[tokio::test]
async fn production_serves_no_development_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = cert_files(dir.path(), "good", (2020, 1, 1), (2099, 1, 1));
    let gw = Gateway::start(production(&cert, &key)).await.expect("starts");
    let http = reqwest::Client::new();
    for path in ["/demo/", "/dev/token", "/dev/cert-hash"] {
        let r = http
            .get(format!("http://{}{}", gw.http_addr, path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let health = http
        .get(format!("http://{}/healthz", gw.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[cfg(unix)]
#[tokio::test]
async fn the_generated_development_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let certs = tempfile::tempdir().unwrap();
    let mut c = config();
    c.cert_dir = certs.path().to_path_buf();
    let _gw = Gateway::start(c).await.expect("starts");
    let mode = std::fs::metadata(certs.path().join("dev-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}
