//! The options of `sync`, `check` and `verify`, declared once in [`RunOptions`]: the same
//! struct is the command line (clap) and the `--config relay.toml` file (serde). Keys of the
//! file are the long flag names (`state-dir = "/var/lib/redis-relay"`); a flag given on the
//! command line overrides the file ([`RunOptions::merge`]). [`RunOptions::validate`] checks a
//! file, a command line or both merged, and names the option in its error;
//! [`RunOptions::resolve`] is the one place with the defaults and gives the [`Settings`].
//!
//! Beside the data path. Owns: every option's name, default and validation. May not touch:
//! servers (it only builds the configuration the CLI and the library start from).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::check::{self, IfNotEmpty};
use crate::endpoint::{Endpoint, Login, Secret, TlsOptions};
use crate::pipeline::field_ttl::UnsupportedPolicy;
use crate::pipeline::filter::KeyFilter;
use crate::pipeline::source_loop::LossPolicy;
use crate::relay::TargetOwner;
use crate::source::topology::Topology;
use crate::target::cluster::TargetKind;
use crate::target::{ErrorPolicy, WriterOptions};

/// Log lines on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How one field of the command line is merged with the same field of the file.
pub trait Merge {
    /// `self` (the command line) over `file`.
    fn merge(self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(self, file: Self) -> Self {
        self.or(file)
    }
}

/// A flag: `true` on the command line or in the file. A `true` in the file cannot be turned off
/// on the command line.
impl Merge for bool {
    fn merge(self, file: Self) -> Self {
        self || file
    }
}

/// Declares [`RunOptions`] (each field once) and what is derived from its field list:
/// [`RunOptions::merge`] and [`RunOptions::KEYS`].
macro_rules! run_options {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// The options' names as in the file and after `--` on the command line.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The command line (`self`) over the file, field by field ([`Merge`]).
            pub fn merge(self, file: Self) -> Self {
                $name { $( $field: Merge::merge(self.$field, file.$field), )* }
            }
        }
    };
}

run_options! {
/// The options of `sync`, `check` and `verify`, as given on the command line or in the config
/// file: every field optional. Options without a default here take theirs from `--config FILE`,
/// then from the built-in default (shown in the help).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunOptions {
    /// A Twemproxy (nutcracker) YAML config: replicate every backend of its pools.
    #[arg(long, conflicts_with = "source")]
    pub twemproxy: Option<PathBuf>,
    /// Only this pool of the Twemproxy config.
    #[arg(long)]
    pub pool: Option<String>,
    /// Sidecar mode: replicate only this server of the Twemproxy pool (its name in the config,
    /// or its host:port as written there; `auto`: the backends on this host's addresses). The
    /// pool's other servers are the peers whose keys are never deleted (repeatable).
    #[arg(long, value_delimiter = ',')]
    pub local_server: Option<Vec<String>>,
    /// Another master writing into the same target, whose keys this relay never deletes
    /// (repeatable): redis://[user[:password]@]host:port
    #[arg(long)]
    pub peer: Option<Vec<String>>,
    /// Who writes into the target: `shared` (default: only keys proven to be this relay's
    /// are ever deleted) or `exclusive` (this relay is the target's only writer).
    #[arg(long, value_enum)]
    pub target_owner: Option<TargetOwner>,
    /// A master to replicate: redis://[user[:password]@]host:port (repeatable).
    #[arg(long)]
    pub source: Option<Vec<String>>,
    /// The target: redis://[user[:password]@]host:port. For a Redis Cluster, any of its nodes;
    /// several (repeated, or comma-separated) are seeds tried in turn.
    #[arg(long, env = "REDIS_RELAY_TARGET", value_delimiter = ',')]
    #[serde(deserialize_with = "de_one_or_many")]
    pub target: Option<Vec<String>>,
    /// What the target is: `standalone` or `cluster` [default: detected with INFO cluster].
    #[arg(long, value_enum)]
    pub target_kind: Option<TargetKind>,
    /// Writer connections to the target [default: cores].
    #[arg(long)]
    pub writers: Option<usize>,
    /// On an error reply from the target: skip (count and log) or stop [default: skip].
    #[arg(long, value_enum)]
    pub on_target_error: Option<ErrorPolicy>,
    /// Hash field TTLs the target cannot hold (Redis before 7.4, Valkey before 9): stop (the
    /// precheck fails, a key or command carrying one stops the relay) or drop-ttl (copy the
    /// fields without them, counted) [default: stop].
    #[arg(long, value_enum)]
    pub on_unsupported_type: Option<UnsupportedPolicy>,
    /// Where checkpoints and the spool live [default: redis-relay-state].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Values bigger than this (bytes) are written as chunked commands, never one RESTORE
    /// [default: 8388608].
    #[arg(long)]
    pub big_key_bytes: Option<usize>,
    /// Never use RESTORE for the snapshot; write plain commands.
    #[arg(long)]
    pub commands_only: bool,
    /// Most bytes a source's spool may hold on disk before the source stops [default: 16 GiB].
    #[arg(long)]
    pub spool_max_bytes: Option<u64>,
    /// Port announced to the masters (REPLCONF listening-port); nothing listens there
    /// [default: 0].
    #[arg(long)]
    pub listening_port: Option<u16>,
    /// Declare a master dead after this many seconds without a byte [default: 60].
    #[arg(long)]
    pub repl_timeout: Option<u64>,
    /// Drop a target connection that answers nothing (or accepts no byte) this many seconds
    /// while batches wait on it; its batches are settled by their records [default: 60].
    #[arg(long)]
    pub target_timeout: Option<u64>,
    /// Key prefix reserved for the relay's own keys [default: redis-relay:].
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Write `SET <key-prefix>heartbeat:<source> <unix ms>` on each source this often (500ms,
    /// 1s, ...) and export the lag in seconds it measures [default: off: no write to a source].
    #[arg(long, value_parser = parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat: Option<Duration>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Log format: text or json [default: text]. On the command line it is the global
    /// `--log-format` of `redis-relay` (any subcommand); here, its key in the file.
    #[arg(skip)]
    pub log_format: Option<LogFormat>,
    /// Start `sync` without the prechecks.
    #[arg(long)]
    pub skip_check: bool,
    /// Accept a target whose maxmemory-policy evicts keys.
    #[arg(long)]
    pub allow_eviction: bool,
    /// When the target's databases hold keys: abort or ignore [default: abort].
    #[arg(long, value_enum)]
    pub if_target_not_empty: Option<IfNotEmpty>,
    /// Copy only these source databases (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub db: Option<Vec<u32>>,
    /// Write source database S into target database T (S:T, comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub db_map: Option<Vec<String>>,
    /// Copy only keys starting with this prefix (repeatable; with --include-regex: either).
    #[arg(long)]
    pub include_prefix: Option<Vec<String>>,
    /// Never copy keys starting with this prefix (repeatable).
    #[arg(long)]
    pub exclude_prefix: Option<Vec<String>>,
    /// Copy only keys matching this regex (repeatable).
    #[arg(long)]
    pub include_regex: Option<Vec<String>>,
    /// Never copy keys matching this regex (repeatable).
    #[arg(long)]
    pub exclude_regex: Option<Vec<String>>,
    /// Never forward this command from the stream (repeatable, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_command: Option<Vec<String>>,
    /// A file holding the sources' password (a trailing newline is dropped): replaces the one
    /// of the --source URLs or the Twemproxy pool's redis_auth. The environment variable
    /// REDIS_RELAY_SOURCE_PASSWORD overrides the file.
    #[arg(long)]
    pub source_password_file: Option<PathBuf>,
    /// The ACL user the relay logs in as on the sources (and a Twemproxy pool's peers): replaces
    /// the user of the --source URLs; with --twemproxy, AUTH <user> <redis_auth or password>.
    #[arg(long)]
    pub source_user: Option<String>,
    /// A file holding the target's password (replaces the URL's). The environment variable
    /// REDIS_RELAY_TARGET_PASSWORD overrides the file.
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// A file holding the --peer masters' password (replaces the URLs'). The environment
    /// variable REDIS_RELAY_PEER_PASSWORD overrides the file.
    #[arg(long)]
    pub peer_password_file: Option<PathBuf>,
    /// TLS to the sources' side (rediss:// sources and peers, a --source-tls pool): the CAs
    /// to trust, a PEM file [default: the system's trust store].
    #[arg(long)]
    pub tls_ca_file: Option<PathBuf>,
    /// TLS to the sources' side: a directory of PEM files of CAs to trust.
    #[arg(long)]
    pub tls_ca_dir: Option<PathBuf>,
    /// TLS to the sources' side: client certificate (PEM) for servers requiring one.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS to the sources' side: the client certificate's private key (PEM).
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
    /// TLS to the sources' side: check the certificates against this name instead of the host.
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// TLS to the sources' side WITHOUT verifying the servers' certificates (logged as a warning).
    #[arg(long)]
    pub tls_insecure: bool,
    /// The Twemproxy pool's backends speak TLS (the --tls-* options apply to them).
    #[arg(long)]
    pub source_tls: bool,
    /// TLS to the target (rediss://): the CAs to trust, a PEM file [default: the system's
    /// trust store].
    #[arg(long)]
    pub target_tls_ca_file: Option<PathBuf>,
    /// TLS to the target: a directory of PEM files of CAs to trust.
    #[arg(long)]
    pub target_tls_ca_dir: Option<PathBuf>,
    /// TLS to the target: client certificate (PEM) for a target requiring one.
    #[arg(long)]
    pub target_tls_cert_file: Option<PathBuf>,
    /// TLS to the target: the client certificate's private key (PEM).
    #[arg(long)]
    pub target_tls_key_file: Option<PathBuf>,
    /// TLS to the target: check its certificates against this name instead of the host.
    #[arg(long)]
    pub target_tls_server_name: Option<String>,
    /// TLS to the target WITHOUT verifying its certificates (logged as a warning).
    #[arg(long)]
    pub target_tls_insecure: bool,
    /// When the target lost what it acknowledged (emptied, restarted from an older save):
    /// resync (the affected sources from a new snapshot) or stop [default: resync].
    #[arg(long, value_enum)]
    pub on_target_loss: Option<LossPolicy>,
    /// TTL of the writer lease each source holds on the target (one relay per source and
    /// target; renewed every third of it) [default: 15s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub lease_ttl: Option<Duration>,
}
}

/// The config file as written: the same options (the name used where a file is meant).
pub type FileConfig = RunOptions;

/// A bad option or combination of options; names the option (its key in the file, its flag
/// without the dashes).
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
    #[error("{option} needs {needs}")]
    Needs {
        option: &'static str,
        needs: &'static str,
    },
    #[error("{0} and {1}: give one of them, not both")]
    Conflict(&'static str, &'static str),
    #[error("give {0}")]
    Missing(&'static str),
}

fn invalid(option: &'static str) -> impl Fn(String) -> OptionsError {
    move |message| OptionsError::Invalid { option, message }
}

fn endpoints(
    option: &'static str,
    list: &Option<Vec<String>>,
) -> Result<Vec<Endpoint>, OptionsError> {
    list.iter()
        .flatten()
        .map(|s| Endpoint::parse(s).map_err(|e| invalid(option)(e.to_string())))
        .collect()
}

fn list<T>(v: Option<Vec<T>>) -> Vec<T> {
    v.unwrap_or_default()
}

/// `sync`, `check` and `verify` as the program runs them: the merged options, with defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sources: check::Sources,
    pub peers: Vec<Endpoint>,
    pub target_owner: TargetOwner,
    /// The target (for a cluster: the first seed).
    pub target: Endpoint,
    /// A cluster target's other seeds (`--target` given more than once).
    pub target_seeds: Vec<Endpoint>,
    /// `--target-kind`: `None` detects it.
    pub target_kind: Option<TargetKind>,
    pub writers: WriterOptions,
    pub state_dir: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub big_key_bytes: usize,
    pub commands_only: bool,
    pub spool_max_bytes: u64,
    pub listening_port: u16,
    pub repl_timeout: Duration,
    pub key_prefix: String,
    pub heartbeat: Option<Duration>,
    pub quiet: bool,
    pub skip_check: bool,
    pub allow_eviction: bool,
    pub if_target_not_empty: IfNotEmpty,
    pub filter: KeyFilter,
    pub exclude_commands: Vec<Vec<u8>>,
    pub on_unsupported_type: UnsupportedPolicy,
    pub on_target_loss: LossPolicy,
    pub lease_ttl: Duration,
}

/// Writer connections when `--writers` is not given: one per core.
pub fn default_writers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl RunOptions {
    /// Parse the text of a config file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<RunOptions> {
        let cfg: RunOptions = toml::from_str(text).map_err(|e| {
            // toml names the key and shows the line; keep its message whole.
            anyhow::anyhow!("{origin}: {}", e.to_string().trim_end())
        })?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> anyhow::Result<RunOptions> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Value checks that the types do not express, for a file, a command line or both merged:
    /// whatever is given must be valid (what is missing is [`RunOptions::resolve`]'s concern).
    pub fn validate(&self) -> Result<(), OptionsError> {
        endpoints("peer", &self.peer)?;
        endpoints("source", &self.source)?;
        endpoints("target", &self.target)?;
        if self.local_server.as_ref().is_some_and(|l| !l.is_empty()) && self.twemproxy.is_none() {
            return Err(OptionsError::Needs {
                option: "local-server",
                needs: "twemproxy (the pool it is a server of)",
            });
        }
        if self.twemproxy.is_some() && self.source.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(OptionsError::Conflict("twemproxy", "source"));
        }
        if self.writers == Some(0) {
            return Err(invalid("writers")("must be at least 1".into()));
        }
        for m in self.db_map.iter().flatten() {
            crate::pipeline::filter::parse_db_map_entry(m)
                .map_err(|e| invalid("db-map")(e.to_string()))?;
        }
        for (option, list) in [
            ("include-regex", &self.include_regex),
            ("exclude-regex", &self.exclude_regex),
        ] {
            for r in list.iter().flatten() {
                regex::bytes::Regex::new(r).map_err(|e| invalid(option)(format!("{r:?}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The sources as given (`--twemproxy` or `--source`), logging in as `--source-user` with
    /// `password` (the resolved override) when given, on TLS with the sources' side options.
    fn sources(&self, password: Option<Secret>, tls: &TlsSide) -> anyhow::Result<check::Sources> {
        Ok(match self.twemproxy.clone() {
            Some(path) => check::Sources::Twemproxy {
                path,
                pool: self.pool.clone(),
                local: list(self.local_server.clone()),
                login: Login {
                    username: self.source_user.clone(),
                    password,
                },
                tls: self.source_tls.then(|| tls.clone()),
            },
            None => {
                if self.pool.is_some() {
                    return Err(OptionsError::Needs {
                        option: "pool",
                        needs: "twemproxy",
                    }
                    .into());
                }
                let mut list = endpoints("source", &self.source)?;
                for ep in &mut list {
                    ep.username = self.source_user.clone().or(ep.username.take());
                }
                let list = tls.attach(with_password(&SOURCE_PASSWORD, list, &password));
                if list.is_empty() {
                    return Err(OptionsError::Missing(
                        "--twemproxy FILE or at least one --source URL (or `twemproxy`/`source` in --config)",
                    )
                    .into());
                }
                check::Sources::List(list)
            }
        })
    }

    /// The merged options with their defaults (the only place of the defaults), validated.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        self.validate()?;
        let tls = self.tls_sides()?;
        let env = |name: &str| std::env::var(name).ok();
        let source_pw =
            password_override(&SOURCE_PASSWORD, self.source_password_file.as_deref(), &env)?;
        let target_pw =
            password_override(&TARGET_PASSWORD, self.target_password_file.as_deref(), &env)?;
        let peer_pw = password_override(&PEER_PASSWORD, self.peer_password_file.as_deref(), &env)?;
        let sources = self.sources(source_pw, &tls.source)?;
        let mut targets = tls.target.attach(with_password(
            &TARGET_PASSWORD,
            endpoints("target", &self.target)?,
            &target_pw,
        ));
        if targets.is_empty() {
            return Err(OptionsError::Missing(
                "--target URL (or `target` in --config, or REDIS_RELAY_TARGET)",
            )
            .into());
        }
        let target = targets.remove(0);
        let dbs = list(self.db);
        let filter = KeyFilter::from_options(
            (!dbs.is_empty()).then_some(dbs),
            &list(self.db_map),
            &list(self.include_prefix),
            &list(self.exclude_prefix),
            &list(self.include_regex),
            &list(self.exclude_regex),
        )?;
        Ok(Settings {
            sources,
            peers: tls.source.attach(with_password(
                &PEER_PASSWORD,
                endpoints("peer", &self.peer)?,
                &peer_pw,
            )),
            target_owner: self.target_owner.unwrap_or(TargetOwner::Shared),
            target,
            target_seeds: targets,
            target_kind: self.target_kind,
            writers: WriterOptions {
                writers: self.writers.unwrap_or_else(default_writers),
                on_error: self.on_target_error.unwrap_or(ErrorPolicy::Skip),
                reply_timeout: Duration::from_secs(self.target_timeout.unwrap_or(60).max(1)),
                ..WriterOptions::default()
            },
            state_dir: self.state_dir.unwrap_or_else(|| "redis-relay-state".into()),
            metrics_addr: self.metrics_addr,
            big_key_bytes: self.big_key_bytes.unwrap_or(8 << 20),
            commands_only: self.commands_only,
            spool_max_bytes: self.spool_max_bytes.unwrap_or(16 << 30),
            listening_port: self.listening_port.unwrap_or(0),
            repl_timeout: Duration::from_secs(self.repl_timeout.unwrap_or(60).max(1)),
            key_prefix: self
                .key_prefix
                .unwrap_or_else(|| crate::batch::record::DEFAULT_PREFIX.into()),
            heartbeat: self.heartbeat,
            quiet: self.quiet,
            skip_check: self.skip_check,
            allow_eviction: self.allow_eviction,
            if_target_not_empty: self.if_target_not_empty.unwrap_or(IfNotEmpty::Abort),
            filter,
            exclude_commands: list(self.exclude_command)
                .into_iter()
                .map(|c| c.trim().to_ascii_uppercase().into_bytes())
                .collect(),
            on_unsupported_type: self.on_unsupported_type.unwrap_or_default(),
            on_target_loss: self.on_target_loss.unwrap_or_default(),
            lease_ttl: self.lease_ttl.unwrap_or(crate::relay::DEFAULT_LEASE_TTL),
        })
    }
}

impl Settings {
    /// The masters this relay replicates, its peers and the pool's placement.
    pub fn topology(&self) -> anyhow::Result<Topology> {
        let t = Topology::resolve(&self.sources, &self.peers)?;
        for w in &t.warnings {
            tracing::warn!("{w}");
        }
        Ok(t)
    }

    /// The prechecks' options.
    pub fn check_options(&self) -> check::CheckOptions {
        let mut o = check::CheckOptions::new(self.sources.clone(), self.target.clone());
        o.peers = self.peers.clone();
        o.allow_eviction = self.allow_eviction;
        o.if_target_not_empty = self.if_target_not_empty;
        o.state_dir = Some(self.state_dir.clone());
        o.target_dbs = self.filter.target_dbs();
        o.own_prefix = self.key_prefix.clone();
        o.target_kind = self.target_kind;
        o.target_seeds = self.target_seeds.clone();
        o.db_filter = self.filter.clone();
        o.on_unsupported_type = self.on_unsupported_type;
        o
    }
}

/// A role whose password may be given apart from its URLs, so that it is not on the command
/// line (`/proc/PID/cmdline`, `ps`): the file option, then the environment variable, wins over
/// the URL (or a Twemproxy pool's `redis_auth`).
#[derive(Debug)]
pub struct PasswordRole {
    /// `source`, `target`, `peer`.
    pub role: &'static str,
    /// The file option's name (`source-password-file`).
    pub file_option: &'static str,
    /// The environment variable (`REDIS_RELAY_SOURCE_PASSWORD`).
    pub env: &'static str,
}

pub const SOURCE_PASSWORD: PasswordRole = PasswordRole {
    role: "source",
    file_option: "source-password-file",
    env: "REDIS_RELAY_SOURCE_PASSWORD",
};
pub const TARGET_PASSWORD: PasswordRole = PasswordRole {
    role: "target",
    file_option: "target-password-file",
    env: "REDIS_RELAY_TARGET_PASSWORD",
};
pub const PEER_PASSWORD: PasswordRole = PasswordRole {
    role: "peer",
    file_option: "peer-password-file",
    env: "REDIS_RELAY_PEER_PASSWORD",
};

/// The password that replaces `role`'s URLs': the environment variable (when set and not
/// empty) over the file; `None` keeps the URLs' (the weakest). A file's trailing newline is
/// dropped; a file open to every user (o+r) gets a warning. Errors name the option, never the content.
pub fn password_override(
    role: &PasswordRole,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, OptionsError> {
    let from_env = env(role.env).filter(|v| !v.is_empty());
    let from_file = match file {
        Some(path) => Some(read_password_file(role, path)?),
        None => None,
    };
    if from_env.is_some() && from_file.is_some() {
        tracing::info!("{} is set: it overrides --{}", role.env, role.file_option);
    }
    Ok(from_env.map(Secret::new).or(from_file))
}

/// A password file: its content without the trailing newline (`echo pw > file` writes one).
fn read_password_file(role: &PasswordRole, path: &Path) -> Result<Secret, OptionsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(role.file_option)(format!("cannot read {}: {e}", path.display())))?;
    let pw = text.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        return Err(invalid(role.file_option)(format!(
            "{} is empty",
            path.display()
        )));
    }
    warn_if_readable_by_others(role, path);
    Ok(Secret::new(pw))
}

#[cfg(unix)]
fn warn_if_readable_by_others(role: &PasswordRole, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        // Group access is how a root-owned file is shared with the service's group (0640).
        if m.permissions().mode() & 0o007 != 0 {
            tracing::warn!(
                "{} {}: the password file is open to every user (mode {:o}): chmod o-rwx it (0600 or 0640)",
                role.file_option,
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &PasswordRole, _: &Path) {}

/// `eps` with the role's override applied; without one, a password written in a URL gets a
/// warning (a URL on the command line is visible to every local user).
fn with_password(
    role: &PasswordRole,
    mut eps: Vec<Endpoint>,
    pw: &Option<Secret>,
) -> Vec<Endpoint> {
    for ep in &mut eps {
        match pw {
            Some(pw) => pw.apply(ep),
            None if ep.password.is_some() => tracing::warn!(
                "the {} URL of {ep} holds a password, which every local user can read while the URL is on a command line (ps, /proc/PID/cmdline): give it with --{} or {} instead",
                role.role, role.file_option, role.env
            ),
            None => {}
        }
    }
    eps
}

/// The TLS options of the sources' side and of the target's.
struct TlsSides {
    source: TlsSide,
    target: TlsSide,
}

/// One side's TLS options, for its `rediss://` endpoints.
struct TlsSide(Arc<TlsOptions>);

impl TlsSide {
    /// The endpoints, those on TLS with this side's options.
    fn attach(&self, mut eps: Vec<Endpoint>) -> Vec<Endpoint> {
        for ep in eps.iter_mut().filter(|e| e.is_tls()) {
            ep.tls = Some(self.0.clone());
        }
        eps
    }

    fn clone(&self) -> Arc<TlsOptions> {
        self.0.clone()
    }
}

impl RunOptions {
    /// The two sides' TLS options. Options given for a side without TLS are an error (they
    /// would be ignored silently), and so is a file that cannot be read: at start, not at the
    /// first connection.
    fn tls_sides(&self) -> Result<TlsSides, OptionsError> {
        let source = TlsOptions {
            ca_file: self.tls_ca_file.clone(),
            ca_dir: self.tls_ca_dir.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
            server_name: self.tls_server_name.clone(),
            insecure: self.tls_insecure,
        };
        let target = TlsOptions {
            ca_file: self.target_tls_ca_file.clone(),
            ca_dir: self.target_tls_ca_dir.clone(),
            cert_file: self.target_tls_cert_file.clone(),
            key_file: self.target_tls_key_file.clone(),
            server_name: self.target_tls_server_name.clone(),
            insecure: self.target_tls_insecure,
        };
        if self.source_tls && self.twemproxy.is_none() {
            return Err(OptionsError::Needs {
                option: "source-tls",
                needs: "twemproxy (use rediss:// URLs with --source)",
            });
        }
        let rediss = |list: &Option<Vec<String>>| {
            list.iter()
                .flatten()
                .any(|u| u.trim_start().starts_with("rediss://"))
        };
        let source_on = self.source_tls || rediss(&self.source) || rediss(&self.peer);
        let target_on = rediss(&self.target);
        for (opts, on, option, needs) in [
            (
                &source,
                source_on,
                "tls-*",
                "a rediss:// source or peer, or --source-tls",
            ),
            (&target, target_on, "target-tls-*", "a rediss:// target"),
        ] {
            if !on && *opts != TlsOptions::default() {
                return Err(OptionsError::Needs { option, needs });
            }
            if on {
                crate::resp::tls::build(opts).map_err(|e| invalid(option)(e.to_string()))?;
            }
        }
        Ok(TlsSides {
            source: TlsSide(Arc::new(source)),
            target: TlsSide(Arc::new(target)),
        })
    }
}

/// `target = "redis://..."` or `target = ["redis://a", "redis://b"]` (seeds of a cluster).
fn de_one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match serde::Deserialize::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A duration option that is not `500ms`, `1s`, `2m` or a positive number of seconds; the
/// message quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration (examples: 500ms, 1s, 2m)")]
    NotADuration(String),
    #[error("{0:?}: must be positive")]
    NotPositive(String),
}

/// `500ms`, `1s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let t = s.trim();
    let (num, mul_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| DurationError::NotADuration(s.to_string()))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(DurationError::NotPositive(s.to_string()));
    }
    Ok(std::time::Duration::from_micros(
        (v * mul_ms * 1000.0) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = FileConfig::parse(
            r#"
twemproxy = "/etc/nutcracker.yml"
target = "redis://:pw@10.0.0.9:6379"
state-dir = "/var/lib/redis-relay"
metrics-addr = "127.0.0.1:9121"
writers = 4
on-target-error = "stop"
db = [0, 1]
db-map = ["1:0"]
exclude-prefix = ["tmp:"]
include-regex = ["^user:[0-9]+$"]
exclude-command = ["FLUSHALL"]
heartbeat = "1s"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.writers, Some(4));
        assert_eq!(c.heartbeat, Some(Duration::from_secs(1)));
        let e = FileConfig::parse("heartbeat = \"often\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("heartbeat") && e.contains("often"), "{e}");
        assert_eq!(c.db, Some(vec![0, 1]));
    }

    #[test]
    fn errors_name_the_field() {
        let e = FileConfig::parse("writerz = 3\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("writerz"), "{e}");
        let e = FileConfig::parse("writers = \"many\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("writers"), "{e}");
        let e = FileConfig::parse("on-target-error = \"explode\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("on-target-error") && e.contains("explode"),
            "{e}"
        );
        let e = FileConfig::parse("metrics-addr = \"nowhere\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics-addr"), "{e}");
        let e = FileConfig::parse("db-map = [\"1-0\"]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("db-map"), "{e}");
        let e = FileConfig::parse("exclude-regex = [\"(\"]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exclude-regex"), "{e}");
    }

    /// The command line and the file are the same declaration: the same values either way.
    #[test]
    fn command_line_and_file_agree_and_merge() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            o: RunOptions,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--on-target-error",
            "stop",
            "--if-target-not-empty",
            "ignore",
            "--target-owner",
            "exclusive",
            "--db",
            "0,1",
            "--heartbeat",
            "1s",
            "--metrics-addr",
            "127.0.0.1:9121",
            "-q",
            "--on-target-loss",
            "stop",
            "--lease-ttl",
            "6s",
        ])
        .unwrap()
        .o;
        let file = RunOptions::parse(
            "on-target-error = \"stop\"\nif-target-not-empty = \"ignore\"\ntarget-owner = \"exclusive\"\ndb = [0, 1]\nheartbeat = \"1s\"\nmetrics-addr = \"127.0.0.1:9121\"\nquiet = true\non-target-loss = \"stop\"\nlease-ttl = \"6s\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cli, file);
        assert_eq!(cli.on_target_error, Some(ErrorPolicy::Stop));
        // The command line over the file; a flag set in the file stays set.
        let cli = RunOptions {
            writers: Some(2),
            ..RunOptions::default()
        };
        let file = RunOptions {
            writers: Some(8),
            state_dir: Some("/s".into()),
            allow_eviction: true,
            ..RunOptions::default()
        };
        let m = cli.merge(file);
        assert_eq!(m.writers, Some(2));
        assert_eq!(m.state_dir.as_deref(), Some(Path::new("/s")));
        assert!(m.allow_eviction);
        assert_eq!(RunOptions::KEYS.len(), 52);
    }

    #[test]
    fn resolve_has_the_defaults_and_names_the_option() {
        let o = RunOptions {
            source: Some(vec!["redis://127.0.0.1:1".into()]),
            target: Some(vec!["redis://127.0.0.1:2".into()]),
            ..RunOptions::default()
        };
        let s = o.clone().resolve().unwrap();
        assert_eq!(s.writers.on_error, ErrorPolicy::Skip);
        assert_eq!(s.if_target_not_empty, IfNotEmpty::Abort);
        assert_eq!(s.target_owner, TargetOwner::Shared);
        assert_eq!(s.state_dir, Path::new("redis-relay-state"));
        assert_eq!(s.big_key_bytes, 8 << 20);
        assert_eq!(s.repl_timeout, Duration::from_secs(60));
        assert_eq!(s.key_prefix, "redis-relay:");
        let e = RunOptions {
            writers: Some(0),
            ..o.clone()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.to_string(), "writers: must be at least 1");
        let e = RunOptions {
            twemproxy: Some("n.yml".into()),
            ..o
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(e, OptionsError::Conflict("twemproxy", "source")),
            "{e}"
        );
    }

    #[test]
    fn target_seeds_and_kind() {
        let one = FileConfig::parse("target = \"redis://10.0.0.1:7000\"\n", "t.toml").unwrap();
        assert_eq!(one.target, Some(vec!["redis://10.0.0.1:7000".to_string()]));
        let many = FileConfig::parse(
            "source = [\"redis://127.0.0.1:1\"]\ntarget = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\ntarget-kind = \"cluster\"\n",
            "t.toml",
        )
        .unwrap();
        let s = many.resolve().unwrap();
        assert_eq!(s.target.port, 7000);
        assert_eq!(s.target.host, "10.0.0.1");
        assert_eq!(s.target_seeds.len(), 1);
        assert_eq!(s.target_seeds[0].host, "10.0.0.2");
        assert_eq!(s.target_kind, Some(TargetKind::Cluster));
        let bad = FileConfig::parse("target = [\"nope://x\"]\n", "t.toml").unwrap_err();
        assert!(bad.to_string().contains("target"), "{bad}");
    }

    /// URL < file < environment; a file's trailing newline is dropped; an empty variable is
    /// unset; errors name the option, never the content.
    #[test]
    fn password_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let none = |_: &str| None;
        let env = |n: &str| (n == "REDIS_RELAY_SOURCE_PASSWORD").then(|| "from-env".to_string());
        let empty = |_: &str| Some(String::new());
        let pw = |f: Option<&Path>, e: &dyn Fn(&str) -> Option<String>| {
            password_override(&SOURCE_PASSWORD, f, e)
                .unwrap()
                .map(|s| s.expose().to_string())
        };
        assert_eq!(pw(None, &none), None);
        assert_eq!(pw(Some(&file), &none).as_deref(), Some("from-file"));
        assert_eq!(pw(Some(&file), &env).as_deref(), Some("from-env"));
        assert_eq!(pw(None, &env).as_deref(), Some("from-env"));
        assert_eq!(pw(Some(&file), &empty).as_deref(), Some("from-file"));
        // The target's variable is not the source's.
        assert_eq!(
            password_override(&TARGET_PASSWORD, None, &env).unwrap(),
            None
        );
        std::fs::write(&file, "\n").unwrap();
        let e = password_override(&SOURCE_PASSWORD, Some(&file), &none).unwrap_err();
        assert!(e.to_string().starts_with("source-password-file: "), "{e}");
        let e =
            password_override(&TARGET_PASSWORD, Some(&dir.path().join("no")), &none).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("target-password-file: cannot read"),
            "{e}"
        );
        // The override replaces the URL's password, keeps its user; the URL's stays without one.
        let eps = vec![Endpoint::parse("redis://u:url-pw@h:1").unwrap()];
        let got = with_password(&SOURCE_PASSWORD, eps.clone(), &Some(Secret::new("x")));
        assert_eq!(got[0].password.as_deref(), Some("x"));
        assert_eq!(got[0].username.as_deref(), Some("u"));
        let got = with_password(&SOURCE_PASSWORD, eps, &None);
        assert_eq!(got[0].password.as_deref(), Some("url-pw"));
        assert_eq!(format!("{:?}", Secret::new("x")), "<redacted>");
    }

    #[test]
    fn source_user_and_password_file_apply_to_every_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        let s = RunOptions {
            source: Some(vec![
                "redis://:old@127.0.0.1:1".into(),
                "127.0.0.1:2".into(),
            ]),
            target: Some(vec!["redis://127.0.0.1:3".into()]),
            source_user: Some("relay-source".into()),
            source_password_file: Some(file),
            ..RunOptions::default()
        }
        .resolve()
        .unwrap();
        let check::Sources::List(eps) = &s.sources else {
            panic!("a list")
        };
        for ep in eps {
            assert_eq!(ep.username.as_deref(), Some("relay-source"));
            assert_eq!(ep.password.as_deref(), Some("s3cret"));
        }
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap().as_millis(), 1000);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("2").unwrap().as_millis(), 2000);
        assert!(parse_duration("0s").is_err());
    }
}
