//! The `redis-relay` command line: a thin layer over the `redis_relay` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use redis_relay::endpoint::Endpoint;
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
                "restored {} keys from {} (RDB {}) into Redis {} in {:.2?}: {} by RESTORE, {} as commands ({} big), {} already expired, {} skipped, {} function libraries; {} commands acknowledged, {} refused",
                s.keys,
                file.display(),
                report.rdb_version,
                report.target_version,
                report.elapsed,
                s.restored,
                s.rewritten,
                s.big_keys,
                s.expired_skipped,
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
