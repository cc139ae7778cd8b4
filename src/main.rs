//! The `redis-relay` command line: a thin layer over the `redis_relay` library.

mod demo;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use redis_relay::check;
use redis_relay::config::{default_writers, LogFormat, RunOptions, Settings, TARGET_PASSWORD};
use redis_relay::endpoint::Endpoint;
use redis_relay::pipeline::field_ttl::UnsupportedPolicy;
use redis_relay::pipeline::stream_apply::StreamOptions;
use redis_relay::relay::{Ownership, RelayBuilder};
use redis_relay::restore::{restore_file, RestoreOptions};
use redis_relay::spool::SpoolOptions;
use redis_relay::status;
use redis_relay::status::http::StatusServer;
use redis_relay::target::cluster::TargetKind;
use redis_relay::target::{ErrorPolicy, WriterOptions};
use redis_relay::verify::{verify, OwnedScope, VerifyOptions, VerifyReport};

#[derive(Parser)]
#[command(
    name = "redis-relay",
    version,
    about = "Replicate Redis masters into another Redis"
)]
struct Cli {
    /// Log format: text or json [default: text] (`log-format` in --config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
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
    /// Show a running relay's sources: state, lag, ops/s, keys, ETA, last error. Exit code:
    /// 0 every source in sync, 1 some not (or the relay still starting), 2 the relay could not
    /// be reached.
    Status {
        /// The relay's --metrics-addr.
        #[arg(long, default_value = "127.0.0.1:9121")]
        addr: String,
        /// Print the /status JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Redraw every SECS seconds (default 2) until Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
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
        /// Hash field TTLs the target cannot hold: stop, or drop-ttl (copy the fields without
        /// them, counted) [default: stop].
        #[arg(long, value_enum, default_value_t)]
        on_unsupported_type: UnsupportedPolicy,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Try the relay: two masters, nutcracker, a target and a write load on free loopback
    /// ports, then `sync` on them until Ctrl-C (everything removed on exit).
    Demo {
        #[command(flatten)]
        args: demo::DemoArgs,
    },
}

/// `--config FILE` and the options of `sync`, `check` and `verify` ([`RunOptions`]).
#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// A TOML file with any of these options (keys are the long names: `state-dir = "..."`);
    /// options on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: RunOptions,
}

impl RunArgs {
    /// The config file's options (none without `--config`).
    fn file(&self) -> anyhow::Result<RunOptions> {
        match &self.config {
            Some(p) => RunOptions::load(p),
            None => Ok(RunOptions::default()),
        }
    }

    /// The command line over the file, with the defaults.
    fn settings(self, file: RunOptions) -> anyhow::Result<Settings> {
        self.options.merge(file).resolve()
    }
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// The target: redis://[user[:password]@]host:port. For a Redis Cluster, any of its
    /// nodes; several (repeated, or comma-separated) are seeds tried in turn.
    #[arg(
        long,
        env = "REDIS_RELAY_TARGET",
        value_delimiter = ',',
        required = true
    )]
    target: Vec<String>,
    /// What the target is: `standalone` or `cluster` [default: detected with INFO cluster].
    #[arg(long, value_enum)]
    target_kind: Option<TargetKind>,
    /// Writer connections to the target.
    #[arg(long, default_value_t = default_writers())]
    writers: usize,
    /// On an error reply from the target: skip (count and log) or stop.
    #[arg(long, value_enum, default_value = "skip")]
    on_target_error: ErrorPolicy,
}

impl TargetArgs {
    fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            writers: self.writers.max(1),
            on_error: self.on_target_error,
            // `restore` ends: a full target is an error with the refused count, not a wait.
            wait_on_oom: false,
            ..WriterOptions::default()
        }
    }

    /// The target's addresses, in the order given, with `REDIS_RELAY_TARGET_PASSWORD` (when
    /// set) as their password, as for `sync`.
    fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        let env = |name: &str| std::env::var(name).ok();
        let pw = redis_relay::config::password_override(&TARGET_PASSWORD, None, &env)?;
        let mut eps: Vec<Endpoint> = self
            .target
            .iter()
            .map(|t| Endpoint::parse(t))
            .collect::<Result<_, _>>()?;
        for ep in eps.iter_mut() {
            if let Some(pw) = &pw {
                pw.apply(ep);
            }
        }
        Ok(eps)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log redirected to a file or a journal stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(redis_relay::progress::log_writer);
    if format == LogFormat::Json {
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
        _ => RunOptions::default(),
    };
    // The global flag is the command-line form of the file's `log-format`.
    let format = cli.log_format.or(file.log_format).unwrap_or_default();
    init_logging(format);
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

fn run(cmd: Command, file: RunOptions) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Sync { args } => run_sync(args.settings(file)?),
        Command::Check { args, json } => run_check(args.settings(file)?, json),
        Command::Verify {
            args,
            sample,
            ttl_tolerance_ms,
            recheck_rounds,
            max_differences,
            json,
        } => {
            let s = args.settings(file)?;
            let mut opts = VerifyOptions {
                sample,
                recheck_rounds,
                ..VerifyOptions::default()
            };
            opts.compare.ttl_tolerance_ms = ttl_tolerance_ms;
            opts.compare.max_differences = max_differences;
            run_verify(s, opts, json)
        }
        Command::Dump { file, canonical } => run_dump(&file, canonical),
        Command::Status { addr, json, watch } => run_status(&addr, json, watch),
        Command::Restore {
            file,
            target,
            big_key_bytes,
            commands_only,
            on_unsupported_type,
            quiet,
        } => {
            let opts = RestoreOptions {
                writers: target.writer_options(),
                big_value_bytes: big_key_bytes,
                commands_only,
                on_unsupported_type,
                quiet,
                ..RestoreOptions::default()
            };
            run_restore(&file, &target, &opts)
        }
        Command::Demo { args } => run_demo(&args),
    }
}

/// `demo`: the servers, data and load of [`demo::Demo`], then the same `sync` as the command's
/// ([`run_sync`]); the demo's servers and temp dir go when it ends, however it ends.
fn run_demo(args: &demo::DemoArgs) -> anyhow::Result<ExitCode> {
    // First: a Ctrl-C during the setup must not kill the process with its servers running.
    let interrupt = demo::Interrupt::watch()?;
    let demo = match demo::Demo::start(args, &interrupt) {
        Ok(d) => d,
        Err(demo::DemoError::Interrupted) => {
            eprintln!("demo: interrupted before the sync; servers stopped");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", demo.guide());
    if interrupt.is_set() {
        demo.finish();
        return Ok(ExitCode::SUCCESS);
    }
    let result = demo.run_options().resolve().and_then(run_sync);
    demo.finish();
    result
}

/// `sync`: the prechecks, the HTTP endpoint (metrics and status), then the relay until a
/// signal stops it.
fn run_sync(s: Settings) -> anyhow::Result<ExitCode> {
    if !s.skip_check {
        precheck(&s)?;
    }
    let server = match s.metrics_addr {
        Some(addr) => {
            let server = StatusServer::start(addr)?;
            let addr = server.local_addr();
            tracing::info!("metrics at http://{addr}/metrics, status at http://{addr}/status (also /healthz, /readyz)");
            Some(server)
        }
        None => None,
    };
    let handle = relay_builder(&s)?.start()?;
    if let Some(server) = &server {
        server.set_relay(handle.clone());
    }
    let code = redis_relay::relay::run_until_signal(&handle, s.quiet)?;
    Ok(code)
}

/// `status`: the relay's /status as a table or JSON, once or every `watch` seconds. Exit code
/// 0 when every source is in sync, 1 when not, 2 when the relay cannot be reached.
fn run_status(addr: &str, json: bool, watch: Option<f64>) -> anyhow::Result<ExitCode> {
    let Some(every) = watch else {
        return Ok(print_status(addr, json));
    };
    if !(every.is_finite() && every >= 0.1) {
        // Exit code 2, like clap's own usage errors (1 means "not in sync").
        eprintln!("error: --watch takes a number of seconds of at least 0.1, not {every}");
        return Ok(ExitCode::from(2));
    }
    loop {
        // Clear the screen and go home, then draw; errors are shown and the watch goes on.
        print!("\x1b[2J\x1b[H");
        print_status(addr, json);
        std::io::stdout().flush()?;
        std::thread::sleep(std::time::Duration::from_secs_f64(every));
    }
}

/// Fetch and print the status once; the exit code of `status`.
fn print_status(addr: &str, json: bool) -> ExitCode {
    match status::client::fetch(addr) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", status::client::table(&report));
            }
            if report.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The relay the settings describe: its sources and peers, target, writers and stream options.
fn relay_builder(s: &Settings) -> anyhow::Result<RelayBuilder> {
    let topology = s.topology()?;
    Ok(RelayBuilder::new()
        .sources(topology.sources.clone())
        .ownership(Ownership {
            peers: topology.peers.clone(),
            pool_known: topology.pool_known,
            owner: topology.owner.clone(),
            target_owner: s.target_owner,
        })
        .target(s.target.clone())
        .target_seeds(s.target_seeds.clone())
        .target_kind(s.target_kind)
        .state_dir(&s.state_dir)
        .writers(s.writers.clone())
        .big_value_bytes(s.big_key_bytes)
        .use_restore(!s.commands_only)
        .listening_port(s.listening_port)
        .repl_timeout(s.repl_timeout)
        .heartbeat(s.heartbeat)
        .on_target_loss(s.on_target_loss)
        .lease_ttl(s.lease_ttl)
        .spool(SpoolOptions {
            max_disk_bytes: s.spool_max_bytes,
            ..SpoolOptions::default()
        })
        .stream_options(StreamOptions {
            own_prefix: s.key_prefix.clone().into_bytes().into(),
            exclude_commands: s.exclude_commands.clone(),
            filter: std::sync::Arc::new(s.filter.clone()),
            on_unsupported_type: s.on_unsupported_type,
            ..StreamOptions::default()
        }))
}

/// `check`: the prechecks alone, as text or JSON; exit code 1 when one fails.
fn run_check(s: Settings, json: bool) -> anyhow::Result<ExitCode> {
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

/// `verify`: compare the sources (a sidecar: its share) with the target; exit code 1 when
/// they differ. `opts` holds the command line's settings; the scope comes from the topology.
fn run_verify(s: Settings, mut opts: VerifyOptions, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        s.filter.is_identity() && s.exclude_commands.is_empty(),
        "verify compares everything: it does not take --db, --db-map, prefixes, regexes or --exclude-command"
    );
    let topology = s.topology()?;
    let sidecar =
        matches!(&s.sources, check::Sources::Twemproxy { local, .. } if !local.is_empty());
    // One sidecar's share: its backend(s) against the target keys they own.
    opts.owned = (sidecar || !topology.peers.is_empty()).then(|| OwnedScope {
        owner: topology.owner.clone(),
        local: topology.sources.clone(),
        peers: topology.peers.clone(),
    });
    let sources = topology.sources;
    opts.read.ignore_prefixes = vec![s.key_prefix.clone().into_bytes().into()];
    opts.target_kind = s.target_kind;
    opts.target_seeds = s.target_seeds.clone();
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

/// `dump`: every key of an RDB file as JSON lines, or one canonical document.
fn run_dump(file: &Path, canonical: bool) -> anyhow::Result<ExitCode> {
    let f = std::fs::File::open(file)
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

/// `restore`: load an RDB file into the target and print what was written; exit code 2 when
/// the target refused commands or keys could not be written.
fn run_restore(
    file: &Path,
    target: &TargetArgs,
    opts: &RestoreOptions,
) -> anyhow::Result<ExitCode> {
    let mut seeds = target.endpoints()?;
    let first = seeds.remove(0);
    let opts = RestoreOptions {
        target_seeds: seeds,
        target_kind: target.target_kind,
        ..opts.clone()
    };
    let report = restore_file(file, &first, &opts)?;
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
