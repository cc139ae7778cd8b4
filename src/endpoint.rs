//! Where a Redis server is and how to log in: parsed from `redis://` URLs, or `rediss://`
//! for TLS (the certificates and names to check are [`TlsOptions`], attached from the
//! configuration: the URL only says TLS is on).
//!
//! The textual form shown to users (logs, metrics labels) is `host:port` only, so a password
//! can never leak through `Display`; `Debug` redacts it too.
//!
//! Shared vocabulary: imports nothing of the crate.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// Default Redis port, used when the URL has none.
pub const DEFAULT_PORT: u16 = 6379;

/// A Redis server address with optional credentials and database.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP address, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// ACL user name (`AUTH user pass`), Redis 6+.
    pub username: Option<String>,
    /// Password (`AUTH pass`, or `AUTH user pass` with a user name).
    pub password: Option<String>,
    /// Database index from the URL path (`redis://host:port/3`).
    pub db: Option<u32>,
    /// TLS on (`rediss://`, or a Twemproxy pool declared TLS) and what it checks.
    pub tls: Option<Arc<TlsOptions>>,
}

/// How a TLS connection checks the server and shows itself: one set for the sources' side
/// (masters, pool backends, peers) and one for the target's (`--tls-*` / `--target-tls-*`).
/// Pure data (paths and flags): `resp::tls` turns it into a rustls configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust (with `ca_dir`: both).
    pub ca_file: Option<PathBuf>,
    /// Directory of PEM files of CA certificates to trust.
    pub ca_dir: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that require one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name to check the server's certificate against (and to send as SNI) instead of
    /// the host of the URL.
    pub server_name: Option<String>,
    /// No verification of the server's certificate at all (`--tls-insecure`).
    pub insecure: bool,
}

/// Why an endpoint string was rejected. Messages never include the password.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("invalid Redis URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("unsupported scheme {scheme:?} in {url:?}: expected redis:// or rediss:// (TLS)")]
    UnsupportedScheme { url: String, scheme: String },
}

impl Endpoint {
    /// A plain endpoint without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            username: None,
            password: None,
            db: None,
            tls: None,
        }
    }

    /// Parses `redis[s]://[user[:password]@]host[:port][/db]`, or a bare `host:port`.
    ///
    /// User name and password are percent-decoded (a `@` or `:` in a password must be written
    /// `%40` / `%3A`). IPv6 hosts are written in brackets: `redis://[::1]:6379`.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let shown = redact(s);
        let invalid = |reason: &str| EndpointError::Invalid {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let with_scheme;
        let text = if s.contains("://") {
            s
        } else {
            with_scheme = format!("redis://{s}");
            &with_scheme
        };
        let url = url::Url::parse(text).map_err(|e| invalid(&e.to_string()))?;
        let tls = match url.scheme() {
            "redis" => None,
            "rediss" => Some(Arc::new(TlsOptions::default())),
            other => {
                return Err(EndpointError::UnsupportedScheme {
                    url: shown.clone(),
                    scheme: other.to_string(),
                })
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("missing host"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = url.port().unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(invalid("port 0"));
        }
        let username = match url.username() {
            "" => None,
            u => Some(percent_decode(u).ok_or_else(|| invalid("bad percent-encoding in user"))?),
        };
        let password = match url.password() {
            None => None,
            Some(p) => {
                Some(percent_decode(p).ok_or_else(|| invalid("bad percent-encoding in password"))?)
            }
        };
        let path = url.path().trim_start_matches('/');
        let db = if path.is_empty() {
            None
        } else {
            Some(path.parse::<u32>().map_err(|_| {
                invalid(&format!("database {path:?} is not a non-negative integer"))
            })?)
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("query strings and fragments are not supported"));
        }
        Ok(Endpoint {
            host,
            port,
            username,
            password,
            db,
            tls,
        })
    }

    /// Whether connections to this server speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `host:port` suitable for `TcpStream::connect` (brackets around IPv6 literals).
    pub fn addr(&self) -> String {
        self.to_string()
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A password held apart from any URL (`--source-password-file`, `REDIS_RELAY_*_PASSWORD`):
/// `Debug` shows `<redacted>` and there is no `Display`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for `AUTH` only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `ep` with this password instead of its own (the user name stays).
    pub fn apply(&self, ep: &mut Endpoint) {
        ep.password = Some(self.0.clone());
    }
}

/// Who the relay logs in as on a group of servers when the options say it apart from the
/// URLs (`--source-user`, the password options): each part replaces the URL's when given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl Login {
    /// `ep` with this login's parts instead of its own.
    pub fn apply(&self, ep: &mut Endpoint) {
        if let Some(u) = &self.username {
            ep.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            p.apply(ep);
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The URL with anything between `://` and `@` replaced, for error messages.
fn redact(s: &str) -> String {
    let (scheme, rest) = match s.find("://") {
        Some(i) => (&s[..i + 3], &s[i + 3..]),
        None => ("", s),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}<credentials>{}", &rest[at..]),
        None => s.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A source's name (`host:port`) as a file name under the state directory: anything but
/// letters, digits, `.` and `-` becomes `_`.
pub fn file_stem(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let e = Endpoint::parse("redis://alice:p%40ss%3Aw@example.com:6380/3").unwrap();
        assert_eq!(e.host, "example.com");
        assert_eq!(e.port, 6380);
        assert_eq!(e.username.as_deref(), Some("alice"));
        assert_eq!(e.password.as_deref(), Some("p@ss:w"));
        assert_eq!(e.db, Some(3));
        assert_eq!(e.to_string(), "example.com:6380");
        assert!(!format!("{e:?}").contains("p@ss"));
    }

    #[test]
    fn password_only_and_defaults() {
        let e = Endpoint::parse("redis://:secret@10.0.0.1:7000").unwrap();
        assert_eq!(e.username, None);
        assert_eq!(e.password.as_deref(), Some("secret"));
        assert_eq!(e.db, None);
        let e = Endpoint::parse("redis://localhost").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 6379));
        let e = Endpoint::parse("127.0.0.1:6390").unwrap();
        assert_eq!(e.to_string(), "127.0.0.1:6390");
        let e = Endpoint::parse("redis://h:1/").unwrap();
        assert_eq!(e.db, None);
    }

    #[test]
    fn ipv6() {
        let e = Endpoint::parse("redis://[::1]:6379/0").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.db, Some(0));
        assert_eq!(e.to_string(), "[::1]:6379");
    }

    #[test]
    fn rediss_turns_tls_on() {
        let e = Endpoint::parse("rediss://u:pw@h:1").unwrap();
        assert_eq!(e.tls.as_deref(), Some(&TlsOptions::default()));
        assert_eq!(e.to_string(), "h:1");
        assert!(!Endpoint::parse("redis://h:1").unwrap().is_tls());
    }

    #[test]
    fn errors() {
        let err = Endpoint::parse("rediss2://u:pw@h:1").unwrap_err();
        assert!(matches!(err, EndpointError::UnsupportedScheme { .. }));
        assert!(err.to_string().contains("rediss2"));
        assert!(!err.to_string().contains("pw"));
        assert!(Endpoint::parse("redis://h:1/x").is_err());
        assert!(Endpoint::parse("redis://h:99999").is_err());
        assert!(Endpoint::parse("redis://:pw@h:1/x")
            .unwrap_err()
            .to_string()
            .contains("<credentials>"));
        assert!(Endpoint::parse("redis://:p%zz@h:1").is_err());
        assert!(Endpoint::parse("http://h:1").is_err());
    }
}
