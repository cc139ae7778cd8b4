//! The `redis-relay` command line: a thin layer over the `redis_relay` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use redis_relay::endpoint::Endpoint;
use redis_relay::pipeline::spool::SpoolOptions;
use redis_relay::pipeline::stream_apply::StreamOptions;
use redis_relay::relay::RelayBuilder;
use redis_relay::restore::{restore_file, RestoreOptions};
use redis_relay::target::{ErrorPolicy, WriterOptions};

#[derive(Parser)]
#[command(
    name = "redis-relay",
    version,
    about = "Replicate Redis masters into another Redis"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replicate masters (PSYNC) into the target: snapshot, then the live stream, until stopped.
    Sync {
        #[command(flatten)]
        sources: SourceArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// Where checkpoints and the spool live.
        #[arg(long, default_value = "redis-relay-state")]
        state_dir: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Values bigger than this (bytes) are written as chunked commands, never one RESTORE.
        #[arg(long, default_value_t = 8 << 20)]
        big_key_bytes: usize,
        /// Never use RESTORE for the snapshot; write plain commands.
        #[arg(long)]
        commands_only: bool,
        /// Most bytes a source's spool may hold on disk before the source stops.
        #[arg(long, default_value_t = 16 << 30)]
        spool_max_bytes: u64,
        /// Port announced to the masters (REPLCONF listening-port); nothing listens there.
        #[arg(long, default_value_t = 0)]
        listening_port: u16,
        /// Declare a master dead after this many seconds without a byte.
        #[arg(long, default_value_t = 60)]
        repl_timeout: u64,
        /// Key prefix reserved for the relay's own bookkeeping keys on the target.
        #[arg(long, default_value = "redis-relay:")]
        key_prefix: String,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
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

#[derive(Args, Clone)]
struct SourceArgs {
    /// A Twemproxy (nutcracker) YAML config: replicate every backend of its pools.
    #[arg(long, conflicts_with = "source")]
    twemproxy: Option<PathBuf>,
    /// Only this pool of the Twemproxy config.
    #[arg(long, requires = "twemproxy")]
    pool: Option<String>,
    /// A master to replicate: redis://[user[:password]@]host:port (repeatable).
    #[arg(long)]
    source: Vec<String>,
}

impl SourceArgs {
    fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        if let Some(path) = &self.twemproxy {
            let tw = redis_relay::source::twemproxy::load_config(path, self.pool.as_deref())?;
            for p in tw.auto_eject_pools() {
                tracing::warn!(pool = p, "auto_eject_hosts is true: while a backend was ejected, its keys were written to other backends, so one key may exist on two masters and the target keeps whichever wrote last");
            }
            anyhow::ensure!(
                !tw.backends.is_empty(),
                "{}: no Redis backend found",
                path.display()
            );
            return Ok(tw.backends.into_iter().map(|b| b.endpoint).collect());
        }
        anyhow::ensure!(
            !self.source.is_empty(),
            "give --twemproxy FILE or at least one --source URL"
        );
        self.source
            .iter()
            .map(|s| Endpoint::parse(s).map_err(Into::into))
            .collect()
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
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Sync {
            sources,
            target,
            state_dir,
            metrics_addr,
            big_key_bytes,
            commands_only,
            spool_max_bytes,
            listening_port,
            repl_timeout,
            key_prefix,
            quiet,
        } => {
            if let Some(addr) = metrics_addr {
                redis_relay::metrics::install_exporter(addr)?;
                tracing::info!("metrics at http://{addr}/metrics");
            }
            let builder = RelayBuilder::new()
                .sources(sources.endpoints()?)
                .target(target.endpoint()?)
                .state_dir(&state_dir)
                .writers(target.writer_options())
                .big_value_bytes(big_key_bytes)
                .use_restore(!commands_only)
                .listening_port(listening_port)
                .repl_timeout(std::time::Duration::from_secs(repl_timeout.max(1)))
                .spool(SpoolOptions {
                    max_disk_bytes: spool_max_bytes,
                    ..SpoolOptions::default()
                })
                .stream_options(StreamOptions {
                    own_prefix: key_prefix.into_bytes().into(),
                    ..StreamOptions::default()
                });
            let handle = builder.start()?;
            let code = redis_relay::relay::run_until_signal(&handle, quiet)?;
            Ok(code)
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
                "restored {} keys from {} (RDB {}) into Redis {} in {:.2?}: {} by RESTORE, {} as commands ({} big), {} already expired, {} empty, {} skipped, {} function libraries; {} commands acknowledged, {} refused",
                s.keys,
                file.display(),
                report.rdb_version,
                report.target_version,
                report.elapsed,
                s.restored,
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
