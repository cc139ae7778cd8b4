//! TLS client settings: [`TlsOptions`] (paths and flags) turned into a rustls
//! `ClientConfig`, the server name to check, and a rustls failure told in words a user can act
//! on ("certificate expired", "signed by an unknown CA", ...).
//!
//! Shared by the blocking client (`resp::transport`) and the async replication link
//! (`source::stream`). Roots: the CA file and/or directory when given, else the system's
//! trust store (`rustls-native-certs`: the same roots `redis-cli --tls` and openssl use, and
//! kept up to date by the system's `ca-certificates`, unlike a list compiled into the binary).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::endpoint::{Endpoint, TlsOptions};

/// A TLS setting that cannot be used (named file unreadable, no certificate in it, ...).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {what} {path}: {cause}")]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("no trusted CA: the system has none (install ca-certificates) and no CA file or directory was given")]
    NoRoots,
    #[error("a client certificate needs its key and a key its certificate (give both)")]
    HalfClientAuth,
    #[error("the client certificate and key cannot be used: {0}")]
    ClientAuth(String),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The rustls configuration for `opts`, built once per distinct set of options (a relay
/// opens many connections with one or two sets). An insecure set is announced with a warning
/// when first built, which is at the first connection, so at start.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsConfigError> {
    type Cache = Mutex<Vec<(TlsOptions, Arc<ClientConfig>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, c)) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(o, _)| o == opts)
    {
        return Ok(c.clone());
    }
    let config = build(opts)?;
    if opts.insecure {
        tracing::warn!(
            "TLS WITHOUT VERIFICATION (--tls-insecure / --target-tls-insecure): any server, or \
             anyone in the middle, is accepted as the server; use a CA file instead"
        );
    }
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((opts.clone(), config.clone()));
    Ok(config)
}

/// A new rustls configuration for `opts` (what [`client_config`] caches); also what the
/// options' validation calls, so that an unreadable file fails at start.
pub fn build(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsConfigError> {
    // ring, not aws-lc-rs: it builds with a C compiler alone. rustls deprecates it for lacking
    // post-quantum key exchange, which Redis servers (OpenSSL) do not offer either.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::ClientAuth(e.to_string()))?;
    let builder = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(opts)?)
    };
    let config = match (&opts.cert_file, &opts.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs("client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsConfigError::Read {
                what: "client key",
                path: key.clone(),
                cause: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsConfigError::ClientAuth(e.to_string()))?
        }
        _ => return Err(TlsConfigError::HalfClientAuth),
    };
    Ok(Arc::new(config))
}

/// The CAs to trust: the file and directory given, else the system's.
fn roots(opts: &TlsOptions) -> Result<RootCertStore, TlsConfigError> {
    let mut store = RootCertStore::empty();
    if opts.ca_file.is_none() && opts.ca_dir.is_none() {
        let native = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(native.certs);
        if store.is_empty() {
            return Err(TlsConfigError::NoRoots);
        }
        return Ok(store);
    }
    if let Some(file) = &opts.ca_file {
        store.add_parsable_certificates(read_certs("CA file", file)?);
    }
    if let Some(dir) = &opts.ca_dir {
        let read_err = |e: std::io::Error| TlsConfigError::Read {
            what: "CA directory",
            path: dir.clone(),
            cause: e.to_string(),
        };
        let before = store.len();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            // Not every file of a CA directory is a certificate (c_rehash's links are, and
            // repeat them): take what parses.
            if let Ok(certs) = CertificateDer::pem_file_iter(&path) {
                store.add_parsable_certificates(certs.flatten());
            }
        }
        if store.len() == before {
            return Err(TlsConfigError::NoCertificate {
                what: "CA directory",
                path: dir.clone(),
            });
        }
    }
    Ok(store)
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsConfigError::Read {
            what,
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The name the server's certificate must carry (an IP address for an IP host: its IP SAN),
/// also sent as SNI for a DNS name.
pub fn server_name(
    ep: &Endpoint,
    opts: &TlsOptions,
) -> Result<ServerName<'static>, TlsConfigError> {
    let name = opts.server_name.as_deref().unwrap_or(&ep.host);
    ServerName::try_from(name.to_string()).map_err(|_| TlsConfigError::ServerName(name.into()))
}

/// A TLS failure in words, from the rustls error inside an I/O error (`None`: not a TLS
/// failure).
pub fn describe(err: &std::io::Error) -> Option<String> {
    let inner = err.get_ref()?;
    let tls = inner.downcast_ref::<rustls::Error>()?;
    Some(describe_rustls(tls))
}

/// A rustls error in words a user can act on.
pub fn describe_rustls(err: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match err {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "certificate expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate not valid yet".into()
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "certificate signed by an unknown CA (give the server's CA with --tls-ca-file / --target-tls-ca-file)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("{err} (the certificate does not name this host: check the URL's host or set --tls-server-name / --target-tls-server-name)")
        }
        E::InvalidCertificate(C::BadSignature) => "certificate with a bad signature".into(),
        E::AlertReceived(A::CertificateRequired | A::HandshakeFailure | A::BadCertificate)
        | E::AlertReceived(A::UnknownCA) => format!(
            "the server refused the client ({err}): it may require a client certificate (--tls-cert-file and --tls-key-file, or --target-tls-*) signed by a CA it trusts"
        ),
        E::InvalidMessage(_) => format!(
            "the server does not speak TLS ({err}): a plain-text server behind rediss://?"
        ),
        other => other.to_string(),
    }
}

/// `--tls-insecure`: accepts any certificate, still checks the handshake's signatures (so the
/// connection is encrypted, just not authenticated).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
