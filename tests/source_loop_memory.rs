//! The per-source loop without a server: spool records in (a full resync with its RDB, the
//! command stream, a partial resync), an in-memory target out ([`MemoryTarget`] behind the
//! same `Writers` trait as the writer pool). Checks the snapshot and stream land, the
//! checkpoint and the ACK position follow what the target applied, a resume skips what the
//! target's records say it applied (an INCR replayed after a crash counts once), and a
//! partial resync with a gap stops the loop with an error naming it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use redis_relay::batch::SourceTracker;
use redis_relay::pipeline::checkpoint::{self, Checkpoint};
use redis_relay::pipeline::source_loop::{
    self, AckPosition, ApplyError, LoopFigures, Output, SourceCtx, TargetOutput,
};
use redis_relay::pipeline::stream_apply::StreamOptions;
use redis_relay::pipeline::{ApplyOptions, Dispatcher};
use redis_relay::rdb::testgen::RdbWriter;
use redis_relay::rdb::ParseOptions;
use redis_relay::resp::encode_command;
use redis_relay::spool::{Spool, SpoolOptions, SpoolRecord};
use redis_relay::target::deletion::Authority;
use redis_relay::target::memory::{MemoryTarget, Value};
use redis_relay::target::{TargetInfo, Writers};

const SOURCE: &str = "127.0.0.1:6379";
const REPLID: &str = "8f3a1e0c5b7d9f2a4c6e8b0d1f3a5c7e9b1d3f5a";

/// ACK positions the loop reported.
#[derive(Default)]
struct Acks {
    applied: AtomicU64,
    asked: AtomicU64,
}

impl AckPosition for Acks {
    fn set_applied(&self, offset: u64) {
        self.applied.store(offset, Ordering::Relaxed);
    }

    fn ack_now(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
    }
}

struct Run {
    target: Arc<MemoryTarget>,
    acks: Arc<Acks>,
    figures: Arc<LoopFigures>,
    result: Result<(), ApplyError>,
}

fn rdb(keys: &[(&str, &str)]) -> Bytes {
    let mut w = RdbWriter::new(Vec::new(), 10).expect("rdb header");
    w.aux(b"redis-ver", b"7.0.15").expect("aux");
    w.select_db(0).expect("select");
    for (k, v) in keys {
        w.key_string(k.as_bytes(), v.as_bytes()).expect("key");
    }
    Bytes::from(w.finish().expect("rdb end"))
}

fn commands(cmds: &[&[&str]]) -> Bytes {
    let mut out = bytes::BytesMut::new();
    for c in cmds {
        encode_command(&mut out, c);
    }
    out.freeze()
}

/// The output to an in-memory Redis 7.0 target (values as commands, not RESTORE).
fn target_output(target: Arc<MemoryTarget>, tracker: Arc<SourceTracker>) -> TargetOutput {
    let info = TargetInfo {
        version: "7.0.15".into(),
        valkey_version: None,
        kind: redis_relay::target::cluster::TargetKind::Standalone,
        rdb_version: 10,
    };
    let mut apply = ApplyOptions::for_target(&info);
    apply.use_restore = false;
    TargetOutput::new(SOURCE.into(), Dispatcher::new(target, tracker), apply)
}

/// A loop context over `spool` into `output`, its state in `state`.
fn context(
    state: &Path,
    spool: Arc<Spool>,
    output: Box<dyn Output>,
    (tracker, writers): (Arc<SourceTracker>, usize),
    acks: &Arc<Acks>,
    figures: &Arc<LoopFigures>,
    resume: Option<Checkpoint>,
) -> SourceCtx {
    SourceCtx {
        name: SOURCE.into(),
        spool,
        acks: acks.clone(),
        tracker,
        output,
        stream_opts: StreamOptions::default(),
        parse_opts: ParseOptions {
            read_ahead: true,
            ..ParseOptions::default()
        },
        state_dir: state.to_path_buf(),
        writers,
        stop: Arc::new(AtomicBool::new(false)),
        resume,
        target: None,
        target_cluster: false,
        authority: Authority::Exclusive,
        owner: None,
        figures: figures.clone(),
        guard: None,
    }
}

/// Run one source's loop over `records` (the spool closed after them) into `target`.
fn run(
    state: &Path,
    target: Arc<MemoryTarget>,
    records: Vec<SpoolRecord>,
    resume: Option<Checkpoint>,
) -> Run {
    let spool = Spool::new(&state.join("spool"), SpoolOptions::default()).expect("spool");
    for r in records {
        spool.push(r).expect("push");
    }
    spool.close();
    let tracker = Arc::new(SourceTracker::new(SOURCE, 0, Writers::writers(&*target), 0));
    let output = target_output(target.clone(), tracker.clone());
    let acks = Arc::new(Acks::default());
    let figures = Arc::new(LoopFigures::default());
    let writers = Writers::writers(&*target);
    let output = Box::new(output);
    let ctx = context(
        state,
        spool,
        output,
        (tracker, writers),
        &acks,
        &figures,
        resume,
    );
    let result = source_loop::run(ctx);
    Run {
        target,
        acks,
        figures,
        result,
    }
}

fn string(t: &MemoryTarget, key: &str) -> Option<String> {
    match t.get(0, key.as_bytes()) {
        Some(Value::String(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        other => other.map(|v| format!("{v:?}")),
    }
}

fn full_sync_records(stream: &Bytes) -> Vec<SpoolRecord> {
    vec![
        SpoolRecord::FullResync {
            replid: REPLID.into(),
            offset: Some(1000),
        },
        SpoolRecord::RdbData(rdb(&[("a", "1"), ("b", "2"), ("c", "3")])),
        SpoolRecord::RdbEnd,
        SpoolRecord::StreamData(stream.clone()),
    ]
}

#[test]
fn full_resync_loads_the_snapshot_then_the_stream_and_checkpoints_what_was_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = commands(&[
        &["SELECT", "0"],
        &["SET", "a", "10"],
        &["INCR", "counter"],
        &["RPUSH", "list", "x", "y"],
        &["DEL", "b"],
    ]);
    let r = run(
        dir.path(),
        Arc::new(MemoryTarget::new(4, 16)),
        full_sync_records(&stream),
        None,
    );
    r.result.expect("the loop ends cleanly");
    let t = &r.target;
    assert_eq!(string(t, "a").as_deref(), Some("10"));
    assert_eq!(string(t, "b"), None, "deleted by the stream");
    assert_eq!(string(t, "c").as_deref(), Some("3"), "from the snapshot");
    assert_eq!(string(t, "counter").as_deref(), Some("1"));
    assert!(matches!(t.get(0, b"list"), Some(Value::List(l)) if l.len() == 2));
    assert!(t.errors().is_empty(), "{:?}", t.errors());
    let end = 1000 + stream.len() as u64;
    assert_eq!(r.acks.applied.load(Ordering::Relaxed), end);
    assert!(r.figures.snapshot_done.load(Ordering::Relaxed));
    assert_eq!(r.figures.snapshot_keys.load(Ordering::Relaxed), 3);
    let cp = checkpoint::load(dir.path(), SOURCE)
        .expect("readable")
        .expect("a checkpoint");
    assert_eq!((cp.replid.as_str(), cp.offset, cp.db), (REPLID, end, 0));
}

#[test]
fn a_resume_skips_what_the_target_records_say_it_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = commands(&[&["SELECT", "0"], &["INCR", "counter"], &["INCR", "counter"]]);
    let target = Arc::new(MemoryTarget::new(2, 16));
    let r = run(dir.path(), target.clone(), full_sync_records(&first), None);
    r.result.expect("first run");
    assert_eq!(string(&target, "counter").as_deref(), Some("2"));
    // A crash before the checkpoint moved: the checkpoint says 1000 (just after the
    // snapshot), the target's records say everything of `first` was applied. The master
    // continues from the checkpoint: the same INCRs again, then a new one.
    let cp = Checkpoint {
        source: SOURCE.into(),
        replid: REPLID.into(),
        offset: 1000,
        db: 0,
        writers: 2,
        target_marker: None,
    };
    let again = commands(&[&["SELECT", "0"], &["INCR", "counter"], &["INCR", "counter"]]);
    assert_eq!(again, first);
    let more = commands(&[&["INCR", "counter"], &["SET", "after", "yes"]]);
    let records = vec![
        SpoolRecord::PartialResync {
            replid: REPLID.into(),
            offset: 1000,
        },
        SpoolRecord::StreamData(again),
        SpoolRecord::StreamData(more.clone()),
    ];
    let r = run(dir.path(), target.clone(), records, Some(cp));
    r.result.expect("resumed run");
    assert_eq!(
        string(&target, "counter").as_deref(),
        Some("3"),
        "the replayed INCRs are skipped, the new one applied"
    );
    assert_eq!(string(&target, "after").as_deref(), Some("yes"));
    let end = 1000 + first.len() as u64 + more.len() as u64;
    assert_eq!(r.acks.applied.load(Ordering::Relaxed), end);
}

#[test]
fn a_partial_resync_with_a_gap_stops_the_loop_naming_the_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = commands(&[&["SELECT", "0"], &["SET", "k", "v"]]);
    let mut records = full_sync_records(&stream);
    records.push(SpoolRecord::PartialResync {
        replid: REPLID.into(),
        offset: 5000,
    });
    records.push(SpoolRecord::StreamData(commands(&[&["SET", "late", "1"]])));
    let r = run(
        dir.path(),
        Arc::new(MemoryTarget::new(2, 16)),
        records,
        None,
    );
    let err = r.result.expect_err("a gap is fatal");
    assert!(
        matches!(err, ApplyError::PartialGap { offset: 5000, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(SOURCE) && text.contains("5000"), "{text}");
    assert_eq!(string(&r.target, "k").as_deref(), Some("v"));
    assert_eq!(string(&r.target, "late"), None, "nothing after the gap");
}

#[test]
fn getack_in_the_stream_asks_the_link_for_an_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = commands(&[
        &["SELECT", "0"],
        &["SET", "k", "v"],
        &["REPLCONF", "GETACK", "*"],
    ]);
    let r = run(
        dir.path(),
        Arc::new(MemoryTarget::new(2, 16)),
        full_sync_records(&stream),
        None,
    );
    r.result.expect("clean end");
    assert_eq!(r.acks.asked.load(Ordering::Relaxed), 1);
}

#[test]
fn a_sink_gets_the_snapshot_and_the_commands_in_order() {
    use redis_relay::pipeline::source_loop::{RelayEvent, SinkOutput};
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = commands(&[&["SELECT", "0"], &["SET", "a", "9"], &["PING"]]);
    let spool = Spool::new(&dir.path().join("spool"), SpoolOptions::default()).expect("spool");
    for r in full_sync_records(&stream) {
        spool.push(r).expect("push");
    }
    spool.close();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let sink = move |ev: RelayEvent| {
        log.lock().push(match ev {
            RelayEvent::FullResync { offset, .. } => format!("full {offset:?}"),
            RelayEvent::Snapshot { .. } => "snap".into(),
            RelayEvent::SnapshotEnd { .. } => "end".into(),
            RelayEvent::Command { args, offset, .. } => {
                format!("{} @{offset}", String::from_utf8_lossy(&args.concat()))
            }
        });
        Ok(())
    };
    let figures = Arc::new(LoopFigures::default());
    let acks = Arc::new(Acks::default());
    let output = SinkOutput::new(SOURCE.into(), Box::new(sink), figures.clone());
    let tracker = (Arc::new(SourceTracker::new(SOURCE, 0, 1, 0)), 1);
    let ctx = context(
        dir.path(),
        spool,
        Box::new(output),
        tracker,
        &acks,
        &figures,
        None,
    );
    source_loop::run(ctx).expect("clean end");
    let seen = seen.lock().clone();
    let set_end = 1000 + commands(&[&["SELECT", "0"], &["SET", "a", "9"]]).len();
    let snaps = seen.iter().filter(|s| *s == "snap").count();
    assert_eq!(seen.first().map(String::as_str), Some("full Some(1000)"));
    assert!(snaps >= 3, "{seen:?}");
    let tail = seen[1 + snaps..].to_vec();
    assert_eq!(tail, ["end".to_string(), format!("SETa9 @{set_end}")]);
    assert_eq!(figures.snapshot_keys.load(Ordering::Relaxed), 3);
    assert_eq!(
        acks.applied.load(Ordering::Relaxed),
        1000 + stream.len() as u64,
        "PING counts as applied"
    );
}
