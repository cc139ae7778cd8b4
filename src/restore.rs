//! `restore`: load an RDB file into a live Redis through the same apply path as a full sync.
//!
//! Beside the data path: it drives the pipeline's snapshot apply and the target's writer pool
//! itself, with a file instead of a source. Owns: nothing kept (no checkpoint, no records).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::SourceTracker;
use crate::endpoint::Endpoint;
use crate::pipeline::field_ttl::UnsupportedPolicy;
use crate::pipeline::{ApplyOptions, ApplyStats, Dispatcher, SnapshotApply};
use crate::progress::{CountingReader, Progress, Reporter};
use crate::rdb::{Event, ParseOptions, RdbParser};
use crate::target::cluster::TargetKind;
use crate::target::{TargetInfo, TargetPool, WriterOptions};

/// Settings of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub writers: WriterOptions,
    /// Values bigger than this are written as chunked commands, never one RESTORE.
    pub big_value_bytes: usize,
    /// Never use RESTORE (always plain commands).
    pub commands_only: bool,
    /// Hash field TTLs the target cannot hold (`--on-unsupported-type`).
    pub on_unsupported_type: UnsupportedPolicy,
    pub quiet: bool,
    /// More seeds of a cluster target, tried after the target given.
    pub target_seeds: Vec<Endpoint>,
    /// `Some` forces what the target is; `None` detects it.
    pub target_kind: Option<TargetKind>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            writers: WriterOptions::default(),
            big_value_bytes: ParseOptions::default().big_value_bytes,
            commands_only: false,
            on_unsupported_type: UnsupportedPolicy::Stop,
            quiet: false,
            target_seeds: Vec::new(),
            target_kind: None,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub rdb_version: u32,
    pub bytes: u64,
    pub stats: ApplyStats,
    pub commands: u64,
    pub target_errors: u64,
    pub elapsed: Duration,
    pub target_version: String,
}

/// Why a restore failed; the message names the file or the target.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot open {}: {cause}", path.display())]
    Open {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// The file is not a readable RDB (or the target refused a value under `--on-target-error
    /// stop`): the parser's message says where.
    #[error("{}: {cause}", path.display())]
    File {
        path: std::path::PathBuf,
        cause: Box<crate::rdb::RdbError>,
    },
    /// The target cannot be reached or refused the login.
    #[error(transparent)]
    Target(#[from] crate::resp::ClientError),
    /// The target cannot be used at all: unreachable, INFO refused, a Redis Cluster node.
    #[error(transparent)]
    Unusable(#[from] crate::target::info::TargetUnusable),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Pool(#[from] crate::target::writer::PoolError),
    #[error(transparent)]
    PoolStart(#[from] crate::target::PoolStartError),
}

/// Load `path` into `target`. Returns once the target acknowledged every command.
pub fn restore_file(
    path: &Path,
    target: &Endpoint,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let file = File::open(path).map_err(|cause| RestoreError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut seeds = vec![target.clone()];
    seeds.extend(opts.target_seeds.iter().cloned());
    let (info, apply_opts) = apply_options(&seeds, opts)?;
    let parse_opts = parse_options(opts, apply_opts.undecoded_up_to_version());
    let pool = TargetPool::start(&seeds, info.kind, &opts.writers)?;
    let tracker = Arc::new(SourceTracker::new(
        path.display().to_string(),
        0,
        pool.writers(),
        0,
    ));
    let mut dispatcher = Dispatcher::new(pool.handle(), tracker.clone());
    let mut apply = SnapshotApply::new(apply_opts, 0);
    let (progress, reporter) = start_progress(path, size, opts.quiet);
    let reader = CountingReader::new(
        std::io::BufReader::with_capacity(1 << 20, file),
        progress.clone(),
    );
    let mut parser = RdbParser::new(reader, parse_opts);
    let result = parser.run(|ev| {
        if matches!(ev, Event::Entry(_) | Event::BigStart(_)) {
            progress.keys.fetch_add(1, Ordering::Relaxed);
        }
        apply.on_event(ev, &mut dispatcher).map_err(|e| e.into())
    });
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            abandon(dispatcher, pool, reporter);
            return Err(RestoreError::File {
                path: path.to_path_buf(),
                cause: Box::new(e),
            });
        }
    };
    settle(dispatcher, pool, reporter)?;
    Ok(RestoreReport {
        rdb_version: summary.version,
        bytes: summary.bytes,
        stats: apply.stats.clone(),
        commands: tracker.commands_applied.load(Ordering::Relaxed),
        target_errors: tracker.target_errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        target_version: info.version,
    })
}

/// Asks the target what it is: its version decides what it can load (RESTORE payloads or
/// plain commands).
fn apply_options(
    seeds: &[Endpoint],
    opts: &RestoreOptions,
) -> Result<(TargetInfo, ApplyOptions), RestoreError> {
    let info = TargetInfo::probe(seeds, opts.target_kind, opts.writers.connect_timeout)?;
    let mut apply_opts = ApplyOptions::for_target(&info);
    apply_opts.use_restore = !opts.commands_only;
    apply_opts.on_unsupported_type = opts.on_unsupported_type;
    Ok((info, apply_opts))
}

/// Parsing for the apply: raw payloads kept for RESTORE (files up to
/// `undecoded_up_to_version`), big values in chunks.
fn parse_options(opts: &RestoreOptions, undecoded_up_to_version: u32) -> ParseOptions {
    ParseOptions {
        capture_raw: !opts.commands_only,
        big_value_bytes: opts.big_value_bytes,
        undecoded_up_to_version,
        read_ahead: true,
        ..ParseOptions::default()
    }
}

/// The progress of reading the file (`size` bytes), shown on stderr unless `quiet`.
fn start_progress(path: &Path, size: u64, quiet: bool) -> (Arc<Progress>, Reporter) {
    let progress = Arc::new(Progress::default());
    progress.total_bytes.store(size, Ordering::Relaxed);
    let reporter = Reporter::start(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        progress.clone(),
        quiet,
    );
    (progress, reporter)
}

/// After the whole file: waits until the target acknowledged everything, then stops the
/// writers and the progress output; the first error of either is returned.
fn settle(
    mut dispatcher: Dispatcher,
    pool: TargetPool,
    reporter: Reporter,
) -> Result<(), RestoreError> {
    let flushed = dispatcher.barrier();
    drop(dispatcher);
    let finished = pool.finish();
    reporter.finish();
    flushed?;
    finished?;
    Ok(())
}

/// After an error in the file: lets what was sent settle, but the file's error is the one
/// reported. The dispatcher holds senders of the pool: drop it first, or the writers never
/// see their inputs close and `finish` waits forever.
fn abandon(mut dispatcher: Dispatcher, pool: TargetPool, reporter: Reporter) {
    let _ = dispatcher.flush();
    drop(dispatcher);
    let _ = pool.finish();
    drop(reporter);
}
