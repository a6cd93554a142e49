//! The TLS identity for WebTransport: the configured PEM files, or a development
//! certificate that browsers accept through `serverCertificateHashes` (ECDSA P-256, valid
//! for at most 14 days). The development certificate is kept under the certificate
//! directory and reused while it has more than a day left, so its hash is stable across
//! restarts.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use wtransport::Identity;

/// A loaded identity and, for a development certificate, its SHA-256.
pub struct LoadedIdentity {
    /// The certificate chain and key.
    pub identity: Identity,
    /// Hex SHA-256 of the leaf certificate.
    pub sha256_hex: String,
    /// Whether it is a generated development certificate.
    pub generated: bool,
}

/// Why no identity could be had.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The configured PEM files could not be read.
    #[error("cannot load certificate/key: {0}")]
    Load(String),
    /// The private key is not the certificate's.
    #[error("the private key does not match the certificate: {0}")]
    Mismatch(String),
    /// The certificate is expired or not yet valid.
    #[error("{0}")]
    Expired(String),
    /// The development certificate could not be generated or stored.
    #[error("cannot create the development certificate in {dir}: {err}")]
    Generate {
        /// The directory.
        dir: String,
        /// The cause.
        err: String,
    },
}

/// Validity of a generated certificate: browsers refuse hashes of longer-lived ones.
pub const DEV_CERT_VALIDITY_DAYS: u32 = 14;

fn leaf_hash(identity: &Identity) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        identity.certificate_chain().as_slice()[0].der(),
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes a file readable and writable by its owner only (a private key).
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Checks what the TLS layer would otherwise only find out by failing: that the key is the
/// certificate's and that the certificate is valid now.
pub fn validate(identity: &Identity, now_unix: u64) -> Result<(), CertError> {
    let chain = identity.certificate_chain().as_slice();
    let Some(leaf) = chain.first() else {
        return Err(CertError::Load(
            "the certificate file holds no certificate".into(),
        ));
    };
    let provider = rustls::crypto::ring::default_provider();
    let der = rustls::pki_types::PrivateKeyDer::try_from(identity.private_key().secret_der().to_vec())
        .map_err(|e| CertError::Load(format!("unreadable private key: {e}")))?;
    rustls::sign::CertifiedKey::from_der(
        chain
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.der().to_vec()))
            .collect(),
        der,
        &provider,
    )
    .map_err(|e| CertError::Mismatch(e.to_string()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.der())
        .map_err(|e| CertError::Load(format!("unreadable certificate: {e}")))?;
    let validity = parsed.validity();
    let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if (now_unix as i64) >= until {
        return Err(CertError::Expired(format!(
            "the certificate expired at unix time {until} ({})",
            validity.not_after
        )));
    }
    if (now_unix as i64) < from {
        return Err(CertError::Expired(format!(
            "the certificate is not valid before {}",
            validity.not_before
        )));
    }
    Ok(())
}

/// Loads `cert` and `key` (PEM) and checks that they belong together and are valid now.
pub async fn load(cert: &Path, key: &Path) -> Result<LoadedIdentity, CertError> {
    let identity = Identity::load_pemfiles(cert, key)
        .await
        .map_err(|e| CertError::Load(e.to_string()))?;
    validate(&identity, unix_now())?;
    Ok(LoadedIdentity {
        sha256_hex: leaf_hash(&identity),
        identity,
        generated: false,
    })
}

/// Reuses the development certificate in `dir` if it has more than a day left, otherwise
/// generates a new one there.
pub async fn dev_identity(dir: &Path) -> Result<LoadedIdentity, CertError> {
    let cert_path = dir.join("dev-cert.pem");
    let key_path = dir.join("dev-key.pem");
    let expiry_path = dir.join("dev-cert.expires");
    let gen_err = |err: String| CertError::Generate {
        dir: dir.display().to_string(),
        err,
    };
    if let Ok(expires) = tokio::fs::read_to_string(&expiry_path).await
        && let Ok(expires) = expires.trim().parse::<u64>()
        && expires > unix_now() + 86_400
        && let Ok(loaded) = load(&cert_path, &key_path).await
    {
        return Ok(LoadedIdentity {
            generated: true,
            ..loaded
        });
    }
    let not_after = unix_now() + u64::from(DEV_CERT_VALIDITY_DAYS) * 86_400 - 60;
    let identity = Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .from_now_utc()
        .validity_days(DEV_CERT_VALIDITY_DAYS)
        .build()
        .map_err(|e| gen_err(e.to_string()))?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| gen_err(e.to_string()))?;
    identity
        .certificate_chain()
        .store_pemfile(&cert_path)
        .await
        .map_err(|e| gen_err(e.to_string()))?;
    identity
        .private_key()
        .store_secret_pemfile(&key_path)
        .await
        .map_err(|e| gen_err(e.to_string()))?;
    restrict_to_owner(&key_path).map_err(|e| gen_err(e.to_string()))?;
    tokio::fs::write(&expiry_path, not_after.to_string())
        .await
        .map_err(|e| gen_err(e.to_string()))?;
    Ok(LoadedIdentity {
        sha256_hex: leaf_hash(&identity),
        identity,
        generated: true,
    })
}
