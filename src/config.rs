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
use std::time::Duration;

use crate::check::{self, IfNotEmpty};
use crate::endpoint::Endpoint;
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

    /// The merged options with their defaults (the only place of the defaults), validated.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        self.validate()?;
        let sources = match self.twemproxy {
            Some(path) => check::Sources::Twemproxy {
                path,
                pool: self.pool,
                local: list(self.local_server),
            },
            None => {
                if self.pool.is_some() {
                    return Err(OptionsError::Needs {
                        option: "pool",
                        needs: "twemproxy",
                    }
                    .into());
                }
                let list = endpoints("source", &self.source)?;
                if list.is_empty() {
                    return Err(OptionsError::Missing(
                        "--twemproxy FILE or at least one --source URL (or `twemproxy`/`source` in --config)",
                    )
                    .into());
                }
                check::Sources::List(list)
            }
        };
        let mut targets = endpoints("target", &self.target)?;
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
            peers: endpoints("peer", &self.peer)?,
            target_owner: self.target_owner.unwrap_or(TargetOwner::Shared),
            target,
            target_seeds: targets,
            target_kind: self.target_kind,
            writers: WriterOptions {
                writers: self.writers.unwrap_or_else(default_writers),
                on_error: self.on_target_error.unwrap_or(ErrorPolicy::Skip),
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
        o
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
        assert_eq!(RunOptions::KEYS.len(), 33);
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap().as_millis(), 1000);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("2").unwrap().as_millis(), 2000);
        assert!(parse_duration("0s").is_err());
    }
}
