//! The `redis-relay` command line: a thin layer over the `redis_relay` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use redis_relay::check;
use redis_relay::config::FileConfig;
use redis_relay::endpoint::Endpoint;
use redis_relay::pipeline::filter::KeyFilter;
use redis_relay::pipeline::spool::SpoolOptions;
use redis_relay::pipeline::stream_apply::StreamOptions;
use redis_relay::relay::{Ownership, RelayBuilder};
use redis_relay::restore::{restore_file, RestoreOptions};
use redis_relay::source::topology::Topology;
use redis_relay::target::{ErrorPolicy, WriterOptions};
use redis_relay::verify::{verify, OwnedScope, VerifyOptions, VerifyReport};

#[derive(Parser)]
#[command(
    name = "redis-relay",
    version,
    about = "Replicate Redis masters into another Redis"
)]
struct Cli {
    /// Log format: text or json (default text).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replicate masters (PSYNC) into the target: snapshot, then the live stream, until stopped.
    Sync {
        #[command(flatten)]
        args: RunArgs,
    },
    /// Check sources and target before a sync: one line per check, with its fix.
    Check {
        #[command(flatten)]
        args: RunArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the sources with the target, key by key, by logical value.
    Verify {
        #[command(flatten)]
        args: RunArgs,
        /// Compare a random sample of about N keys instead of every key.
        #[arg(long)]
        sample: Option<usize>,
        /// Accept expire times that differ by up to this many milliseconds.
        #[arg(long, default_value_t = 0)]
        ttl_tolerance_ms: i64,
        /// Re-reads of differing keys (writes in flight settle); 0 reports at once.
        #[arg(long, default_value_t = 3)]
        recheck_rounds: usize,
        /// Differences listed with details (all are counted).
        #[arg(long, default_value_t = 50)]
        max_differences: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print every key of an RDB file as one JSON object per line.
    Dump {
        file: PathBuf,
        /// Print one canonical document (the corpus's expected.json form) instead of lines.
        #[arg(long)]
        canonical: bool,
    },
    /// Load an RDB file into a live Redis.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        /// Values bigger than this (bytes) are written as chunked commands, never one RESTORE.
        #[arg(long, default_value_t = 8 << 20)]
        big_key_bytes: usize,
        /// Never use RESTORE; write every key as plain commands.
        #[arg(long)]
        commands_only: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
}

/// The options of `sync`, `check` and `verify`. Options without a default here take theirs
/// from `--config FILE`, then from the built-in default (shown in the help).
#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// A TOML file with any of these options (keys are the long names: `state-dir = "..."`);
    /// options on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A Twemproxy (nutcracker) YAML config: replicate every backend of its pools.
    #[arg(long, conflicts_with = "source")]
    twemproxy: Option<PathBuf>,
    /// Only this pool of the Twemproxy config.
    #[arg(long)]
    pool: Option<String>,
    /// Sidecar mode: replicate only this server of the Twemproxy pool (its name in the config,
    /// or its host:port as written there; `auto`: the backends on this host's addresses). The
    /// pool's other servers are the peers whose keys are never deleted (repeatable).
    #[arg(long, value_delimiter = ',')]
    local_server: Vec<String>,
    /// Another master writing into the same target, whose keys this relay never deletes
    /// (repeatable): redis://[user[:password]@]host:port
    #[arg(long)]
    peer: Vec<String>,
    /// Who writes into the target: `shared` (default: only keys proven to be this relay's
    /// are ever deleted) or `exclusive` (this relay is the target's only writer).
    #[arg(long, value_enum)]
    target_owner: Option<redis_relay::relay::TargetOwner>,
    /// A master to replicate: redis://[user[:password]@]host:port (repeatable).
    #[arg(long)]
    source: Vec<String>,
    /// The target: redis://[user[:password]@]host:port
    #[arg(long, env = "REDIS_RELAY_TARGET")]
    target: Option<String>,
    /// Writer connections to the target [default: cores].
    #[arg(long)]
    writers: Option<usize>,
    /// On an error reply from the target: skip (count and log) or stop [default: skip].
    #[arg(long, value_parser = ["skip", "stop"])]
    on_target_error: Option<String>,
    /// Where checkpoints and the spool live [default: redis-relay-state].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Values bigger than this (bytes) are written as chunked commands, never one RESTORE
    /// [default: 8388608].
    #[arg(long)]
    big_key_bytes: Option<usize>,
    /// Never use RESTORE for the snapshot; write plain commands.
    #[arg(long)]
    commands_only: bool,
    /// Most bytes a source's spool may hold on disk before the source stops [default: 16 GiB].
    #[arg(long)]
    spool_max_bytes: Option<u64>,
    /// Port announced to the masters (REPLCONF listening-port); nothing listens there
    /// [default: 0].
    #[arg(long)]
    listening_port: Option<u16>,
    /// Declare a master dead after this many seconds without a byte [default: 60].
    #[arg(long)]
    repl_timeout: Option<u64>,
    /// Key prefix reserved for the relay's own keys [default: redis-relay:].
    #[arg(long)]
    key_prefix: Option<String>,
    /// Write `SET <key-prefix>heartbeat:<source> <unix ms>` on each source this often (500ms,
    /// 1s, ...) and export the lag in seconds it measures [default: off: no write to a source].
    #[arg(long, value_parser = redis_relay::config::parse_duration)]
    heartbeat: Option<std::time::Duration>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Start `sync` without the prechecks.
    #[arg(long)]
    skip_check: bool,
    /// Accept a target whose maxmemory-policy evicts keys.
    #[arg(long)]
    allow_eviction: bool,
    /// When the target's databases hold keys: abort or ignore [default: abort].
    #[arg(long, value_parser = ["abort", "ignore"])]
    if_target_not_empty: Option<String>,
    /// Copy only these source databases (comma-separated).
    #[arg(long, value_delimiter = ',')]
    db: Vec<u32>,
    /// Write source database S into target database T (S:T, comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    db_map: Vec<String>,
    /// Copy only keys starting with this prefix (repeatable; with --include-regex: either).
    #[arg(long)]
    include_prefix: Vec<String>,
    /// Never copy keys starting with this prefix (repeatable).
    #[arg(long)]
    exclude_prefix: Vec<String>,
    /// Copy only keys matching this regex (repeatable).
    #[arg(long)]
    include_regex: Vec<String>,
    /// Never copy keys matching this regex (repeatable).
    #[arg(long)]
    exclude_regex: Vec<String>,
    /// Never forward this command from the stream (repeatable, comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_command: Vec<String>,
}

/// [`RunArgs`] merged with the config file and the defaults.
struct Settings {
    sources: check::Sources,
    peers: Vec<Endpoint>,
    target_owner: redis_relay::relay::TargetOwner,
    target: Endpoint,
    writers: WriterOptions,
    state_dir: PathBuf,
    metrics_addr: Option<std::net::SocketAddr>,
    big_key_bytes: usize,
    commands_only: bool,
    spool_max_bytes: u64,
    listening_port: u16,
    repl_timeout: u64,
    key_prefix: String,
    heartbeat: Option<std::time::Duration>,
    quiet: bool,
    skip_check: bool,
    allow_eviction: bool,
    if_target_not_empty: check::IfNotEmpty,
    filter: KeyFilter,
    exclude_commands: Vec<Vec<u8>>,
}

fn pick<T>(cli: Option<T>, file: Option<T>) -> Option<T> {
    cli.or(file)
}

fn pick_vec<T>(cli: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli
    }
}

impl RunArgs {
    fn file(&self) -> anyhow::Result<FileConfig> {
        match &self.config {
            Some(p) => FileConfig::load(p),
            None => Ok(FileConfig::default()),
        }
    }

    fn settings(self, file: FileConfig) -> anyhow::Result<Settings> {
        let twemproxy = pick(self.twemproxy, file.twemproxy.clone());
        let source_urls = pick_vec(self.source, file.source.clone());
        let pool = pick(self.pool, file.pool.clone());
        let local = pick_vec(self.local_server, file.local_server.clone());
        anyhow::ensure!(
            local.is_empty() || twemproxy.is_some(),
            "--local-server needs --twemproxy (the pool it is a server of)"
        );
        let peers = pick_vec(self.peer, file.peer.clone())
            .iter()
            .map(|s| Endpoint::parse(s).map_err(|e| anyhow::anyhow!("--peer: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let target_owner = match self.target_owner {
            Some(o) => o,
            None => file
                .target_owner
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("target-owner: {e}"))?
                .unwrap_or_default(),
        };
        let sources = match twemproxy {
            Some(path) if source_urls.is_empty() => check::Sources::Twemproxy { path, pool, local },
            Some(_) => {
                anyhow::bail!("give --twemproxy or --source, not both (one may come from --config)")
            }
            None => {
                anyhow::ensure!(pool.is_none(), "--pool needs --twemproxy");
                anyhow::ensure!(
                    !source_urls.is_empty(),
                    "give --twemproxy FILE or at least one --source URL (or `twemproxy`/`source` in --config)"
                );
                check::Sources::List(
                    source_urls
                        .iter()
                        .map(|s| Endpoint::parse(s).map_err(|e| anyhow::anyhow!("--source: {e}")))
                        .collect::<anyhow::Result<_>>()?,
                )
            }
        };
        let target = pick(self.target, file.target.clone()).ok_or_else(|| {
            anyhow::anyhow!("give --target URL (or `target` in --config, or REDIS_RELAY_TARGET)")
        })?;
        let target = Endpoint::parse(&target).map_err(|e| anyhow::anyhow!("--target: {e}"))?;
        let on_error = pick(self.on_target_error, file.on_target_error.clone())
            .unwrap_or_else(|| "skip".into());
        let writers = WriterOptions {
            writers: pick(self.writers, file.writers)
                .unwrap_or_else(default_writers)
                .max(1),
            on_error: if on_error == "stop" {
                ErrorPolicy::Stop
            } else {
                ErrorPolicy::Skip
            },
            ..WriterOptions::default()
        };
        let metrics_addr = match self.metrics_addr {
            Some(a) => Some(a),
            None => file.metrics_addr.as_deref().map(str::parse).transpose()?,
        };
        let dbs = pick_vec(self.db, file.db.clone());
        let filter = KeyFilter::from_options(
            (!dbs.is_empty()).then_some(dbs),
            &pick_vec(self.db_map, file.db_map.clone()),
            &pick_vec(self.include_prefix, file.include_prefix.clone()),
            &pick_vec(self.exclude_prefix, file.exclude_prefix.clone()),
            &pick_vec(self.include_regex, file.include_regex.clone()),
            &pick_vec(self.exclude_regex, file.exclude_regex.clone()),
        )?;
        let if_not_empty = pick(self.if_target_not_empty, file.if_target_not_empty.clone())
            .unwrap_or_else(|| "abort".into())
            .parse()
            .map_err(|e| anyhow::anyhow!("--if-target-not-empty: {e}"))?;
        Ok(Settings {
            sources,
            peers,
            target_owner,
            target,
            writers,
            state_dir: pick(self.state_dir, file.state_dir.clone())
                .unwrap_or_else(|| "redis-relay-state".into()),
            metrics_addr,
            big_key_bytes: pick(self.big_key_bytes, file.big_key_bytes).unwrap_or(8 << 20),
            commands_only: self.commands_only || file.commands_only.unwrap_or(false),
            spool_max_bytes: pick(self.spool_max_bytes, file.spool_max_bytes).unwrap_or(16 << 30),
            listening_port: pick(self.listening_port, file.listening_port).unwrap_or(0),
            repl_timeout: pick(self.repl_timeout, file.repl_timeout).unwrap_or(60),
            key_prefix: pick(self.key_prefix, file.key_prefix.clone())
                .unwrap_or_else(|| redis_relay::pipeline::record::DEFAULT_PREFIX.into()),
            heartbeat: match self.heartbeat {
                Some(d) => Some(d),
                None => file
                    .heartbeat
                    .as_deref()
                    .map(redis_relay::config::parse_duration)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("heartbeat: {e}"))?,
            },
            quiet: self.quiet || file.quiet.unwrap_or(false),
            skip_check: self.skip_check || file.skip_check.unwrap_or(false),
            allow_eviction: self.allow_eviction || file.allow_eviction.unwrap_or(false),
            if_target_not_empty: if_not_empty,
            filter,
            exclude_commands: pick_vec(self.exclude_command, file.exclude_command.clone())
                .into_iter()
                .map(|c| c.trim().to_ascii_uppercase().into_bytes())
                .collect(),
        })
    }
}

impl Settings {
    /// The masters this relay replicates, its peers and the pool's placement.
    fn topology(&self) -> anyhow::Result<Topology> {
        let t = Topology::resolve(&self.sources, &self.peers)?;
        for w in &t.warnings {
            tracing::warn!("{w}");
        }
        Ok(t)
    }

    fn check_options(&self) -> check::CheckOptions {
        let mut o = check::CheckOptions::new(self.sources.clone(), self.target.clone());
        o.peers = self.peers.clone();
        o.allow_eviction = self.allow_eviction;
        o.if_target_not_empty = self.if_target_not_empty;
        o.state_dir = Some(self.state_dir.clone());
        o.target_dbs = self.filter.target_dbs();
        o.own_prefix = self.key_prefix.clone();
        o
    }
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// The target: redis://[user[:password]@]host:port
    #[arg(long, env = "REDIS_RELAY_TARGET")]
    target: String,
    /// Writer connections to the target.
    #[arg(long, default_value_t = default_writers())]
    writers: usize,
    /// On an error reply from the target: skip (count and log) or stop.
    #[arg(long, default_value = "skip", value_parser = ["skip", "stop"])]
    on_target_error: String,
}

fn default_writers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl TargetArgs {
    fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            writers: self.writers.max(1),
            on_error: if self.on_target_error == "stop" {
                ErrorPolicy::Stop
            } else {
                ErrorPolicy::Skip
            },
            ..WriterOptions::default()
        }
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        Ok(Endpoint::parse(&self.target)?)
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(redis_relay::progress::log_writer);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The config file may set the log format: read it before logging starts.
    let file = match &cli.command {
        Command::Sync { args } | Command::Check { args, .. } | Command::Verify { args, .. } => {
            match args.file() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => FileConfig::default(),
    };
    let format = cli
        .log_format
        .clone()
        .or(file.log_format.clone())
        .unwrap_or_else(|| "text".into());
    init_logging(&format);
    match run(cli.command, file) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run the prechecks before `sync`; an error when one fails.
fn precheck(s: &Settings) -> anyhow::Result<()> {
    let report = check::run(&s.check_options());
    for c in &report.checks {
        let fix = c
            .fix
            .as_deref()
            .map(|f| format!(" (fix: {f})"))
            .unwrap_or_default();
        match c.status {
            check::Status::Pass => {
                tracing::info!("precheck {} {}: {}", c.subject, c.check, c.message)
            }
            check::Status::Warn => {
                tracing::warn!("precheck {} {}: {}{fix}", c.subject, c.check, c.message)
            }
            check::Status::Fail => {
                tracing::error!("precheck {} {}: {}{fix}", c.subject, c.check, c.message)
            }
        }
    }
    if !report.ok {
        eprint!("{report}");
        anyhow::bail!(
            "{} precheck(s) failed (see above for the fixes); `redis-relay check` runs them alone, --skip-check skips them",
            report.failed
        );
    }
    Ok(())
}

fn run(cmd: Command, file: FileConfig) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Sync { args } => {
            let s = args.settings(file)?;
            if !s.skip_check {
                precheck(&s)?;
            }
            if let Some(addr) = s.metrics_addr {
                redis_relay::metrics::install_exporter(addr)?;
                tracing::info!("metrics at http://{addr}/metrics");
            }
            let topology = s.topology()?;
            let builder = RelayBuilder::new()
                .sources(topology.sources.clone())
                .ownership(Ownership {
                    peers: topology.peers.clone(),
                    pool_known: topology.pool_known,
                    owner: topology.owner.clone(),
                    target_owner: s.target_owner,
                })
                .target(s.target.clone())
                .state_dir(&s.state_dir)
                .writers(s.writers.clone())
                .big_value_bytes(s.big_key_bytes)
                .use_restore(!s.commands_only)
                .listening_port(s.listening_port)
                .repl_timeout(std::time::Duration::from_secs(s.repl_timeout.max(1)))
                .heartbeat(s.heartbeat)
                .spool(SpoolOptions {
                    max_disk_bytes: s.spool_max_bytes,
                    ..SpoolOptions::default()
                })
                .stream_options(StreamOptions {
                    own_prefix: s.key_prefix.clone().into_bytes().into(),
                    exclude_commands: s.exclude_commands.clone(),
                    filter: std::sync::Arc::new(s.filter.clone()),
                    ..StreamOptions::default()
                });
            let handle = builder.start()?;
            let code = redis_relay::relay::run_until_signal(&handle, s.quiet)?;
            Ok(code)
        }
        Command::Check { args, json } => {
            let s = args.settings(file)?;
            let report = check::run(&s.check_options());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Verify {
            args,
            sample,
            ttl_tolerance_ms,
            recheck_rounds,
            max_differences,
            json,
        } => {
            let s = args.settings(file)?;
            anyhow::ensure!(
                s.filter.is_identity() && s.exclude_commands.is_empty(),
                "verify compares everything: it does not take --db, --db-map, prefixes, regexes or --exclude-command"
            );
            let topology = s.topology()?;
            let sidecar =
                matches!(&s.sources, check::Sources::Twemproxy { local, .. } if !local.is_empty());
            let mut opts = VerifyOptions {
                sample,
                recheck_rounds,
                // One sidecar's share: its backend(s) against the target keys they own.
                owned: (sidecar || !topology.peers.is_empty()).then(|| OwnedScope {
                    owner: topology.owner.clone(),
                    local: topology.sources.clone(),
                    peers: topology.peers.clone(),
                }),
                ..VerifyOptions::default()
            };
            let sources = topology.sources;
            opts.compare.ttl_tolerance_ms = ttl_tolerance_ms;
            opts.compare.max_differences = max_differences;
            opts.read.ignore_prefixes = vec![s.key_prefix.clone().into_bytes().into()];
            let report = verify(&sources, &s.target, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&verify_json(&report))?);
            } else {
                print!("{report}");
            }
            Ok(if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Dump { file, canonical } => {
            let f = std::fs::File::open(&file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
            let reader = std::io::BufReader::with_capacity(1 << 20, f);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if canonical {
                let doc = redis_relay::rdb::json::canonical_document(reader)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                serde_json::to_writer_pretty(&mut out, &doc)?;
                writeln!(out)?;
            } else {
                redis_relay::rdb::json::dump_json_lines(reader, &mut out)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            file,
            target,
            big_key_bytes,
            commands_only,
            quiet,
        } => {
            let opts = RestoreOptions {
                writers: target.writer_options(),
                big_value_bytes: big_key_bytes,
                commands_only,
                quiet,
            };
            let report = restore_file(&file, &target.endpoint()?, &opts)?;
            let s = &report.stats;
            eprintln!(
                "restored {} keys from {} (RDB {}) into Redis {} in {:.2?}: {} by RESTORE, {} plain strings by MSET, {} as commands ({} big), {} already expired, {} empty, {} skipped, {} function libraries; {} commands acknowledged, {} refused",
                s.keys,
                file.display(),
                report.rdb_version,
                report.target_version,
                report.elapsed,
                s.restored,
                s.mset,
                s.rewritten,
                s.big_keys,
                s.expired_skipped,
                s.empty_skipped,
                s.skipped,
                s.functions,
                report.commands,
                report.target_errors
            );
            if report.target_errors > 0 || s.skipped > 0 {
                eprintln!("error: the target refused {} commands and {} keys could not be written (see the log above)", report.target_errors, s.skipped);
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The verify report as JSON: counts per database and kind, and the kept differences.
fn verify_json(r: &VerifyReport) -> serde_json::Value {
    let c = &r.compare;
    serde_json::json!({
        "equal": r.is_equal(),
        "source": c.left_name,
        "target": c.right_name,
        "sampled": r.sampled,
        "keys_read": r.keys_read,
        "settled_on_recheck": r.settled,
        "elapsed_seconds": r.elapsed.as_secs_f64(),
        "databases": c.dbs.iter().map(|(db, d)| serde_json::json!({
            "db": db,
            "source_keys": d.left_keys,
            "target_keys": d.right_keys,
            "compared": d.compared,
            "differing": d.differing,
        })).collect::<Vec<_>>(),
        "counts": c.counts.iter().map(|(k, n)| (k.name().to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        "differences": c.differences.iter().map(|d| serde_json::json!({
            "db": d.db,
            // redis-cli style escaping (\xNN for non-printable bytes), without the quotes.
            "key": d.key.strip_prefix('"').and_then(|k| k.strip_suffix('"')).unwrap_or(&d.key),
            "kind": d.kind.name(),
            "detail": d.detail,
        })).collect::<Vec<_>>(),
        "notes": c.notes,
    })
}
