//! TLS for the tests: certificates made in the test (rcgen) and `redis-server`s listening
//! with TLS (`tls-port`) beside their plain port, so that the tests load and compare data in
//! plain text while the relay goes through TLS.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use super::{free_port, RedisServer};

/// The files of one test's certificates, in a temp dir.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    /// A CA; a server certificate for 127.0.0.1 and localhost signed by it (`server`), an
    /// expired one (`expired`), one for another name only (`othername`), and a client
    /// certificate (`client`); a second CA that signed nothing here (`other-ca`).
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = Certs { dir };
        let ca_key = KeyPair::generate().expect("CA key");
        let params = ca_params("redis-relay test CA");
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        certs.write("ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(params, ca_key);
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        certs.leaf("server", &issuer, names.clone(), false, false);
        certs.leaf("expired", &issuer, names, true, false);
        certs.leaf(
            "othername",
            &issuer,
            vec!["redis.example".into()],
            false,
            false,
        );
        certs.leaf("client", &issuer, vec!["relay-client".into()], false, true);
        let other_key = KeyPair::generate().expect("key");
        let other = ca_params("another CA").self_signed(&other_key).expect("CA");
        certs.write("other-ca.pem", &other.pem());
        certs
    }

    fn leaf(
        &self,
        name: &str,
        issuer: &Issuer<'_, KeyPair>,
        sans: Vec<String>,
        expired: bool,
        client: bool,
    ) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, issuer).expect("sign");
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write certificate");
    }

    /// The path of one of the files (`ca.pem`, `server.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path` as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p
}

/// A `redis-server` with a plain port (for the test) and a TLS port (for the relay).
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
}

impl TlsRedis {
    /// TLS with the certificate `cert` (`server`, `expired`, ...) of `certs`;
    /// `require_client_cert`: mutual TLS (`tls-auth-clients yes`).
    pub fn start(certs: &Certs, cert: &str, require_client_cert: bool) -> TlsRedis {
        let tls_port = free_port();
        let lines = [
            format!("tls-port {tls_port}"),
            format!("tls-cert-file {}", certs.arg(&format!("{cert}.pem"))),
            format!("tls-key-file {}", certs.arg(&format!("{cert}.key"))),
            format!("tls-ca-cert-file {}", certs.arg("ca.pem")),
            format!(
                "tls-auth-clients {}",
                if require_client_cert { "yes" } else { "no" }
            ),
            "tls-replication yes".to_string(),
        ];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        TlsRedis {
            server: RedisServer::start(&refs),
            tls_port,
        }
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// `127.0.0.1:<tls port>`, as the relay names it.
    pub fn tls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }
}
