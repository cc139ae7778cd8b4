//! The dispatcher and the stream apply against the in-memory target: routing, batch limits,
//! skips, exactly-once records, barriers, back-pressure, and what a replication stream turns
//! into (transactions, SELECT, filters, offsets, flushes). No server needed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_relay::batch::record::{self, Record};
use redis_relay::batch::{Op, SourceTracker};
use redis_relay::pipeline::dispatcher::ExactlyOnce;
use redis_relay::pipeline::filter::KeyFilter;
use redis_relay::pipeline::router::partition;
use redis_relay::pipeline::stream_apply::{Control, StreamApply, StreamOptions};
use redis_relay::pipeline::{Dispatcher, PipelineError};
use redis_relay::resp::{encode_command, CommandFramer};
use redis_relay::target::memory::{AppliedBatch, MemoryTarget, Value};
use redis_relay::target::writer::{PoolError, WriterFailure};
use redis_relay::target::Writers;

const PREFIX: &str = "redis-relay:";
const REPLID: &str = "8f2d6a0c1b3e4f5a6b7c8d9e0f1a2b3c4d5e6f70";

fn resp(args: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    encode_command(&mut b, args);
    b.freeze()
}

fn stream(cmds: &[&[&str]]) -> Vec<u8> {
    cmds.iter().flat_map(|c| resp(c).to_vec()).collect()
}

fn setup(writers: usize, capacity: usize, start: u64) -> (Arc<MemoryTarget>, Dispatcher) {
    let t = Arc::new(MemoryTarget::new(writers, capacity));
    let tracker = Arc::new(SourceTracker::new("src", 0, writers, start));
    let d = Dispatcher::new(t.clone(), tracker);
    (t, d)
}

fn exactly_once() -> Option<ExactlyOnce> {
    Some(ExactlyOnce {
        prefix: PREFIX.into(),
        source: "src".into(),
        replid: REPLID.into(),
    })
}

fn op(args: &[&str], replayable: bool) -> Op {
    let mut op = Op::new(0, resp(args), 1);
    op.replayable = replayable;
    op
}

fn s(v: &str) -> Option<Value> {
    Some(Value::String(Bytes::copy_from_slice(v.as_bytes())))
}

fn strs(cmd: &[Bytes]) -> Vec<String> {
    cmd.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every command the target applied, per writer, as strings.
fn commands(log: &[Vec<AppliedBatch>]) -> Vec<Vec<Vec<String>>> {
    log.iter()
        .map(|w| {
            w.iter()
                .flat_map(|b| b.commands())
                .map(|c| strs(&c))
                .collect()
        })
        .collect()
}

/// Feed `bytes` through a framer into `apply`; the controls that are not `None`.
fn feed(apply: &mut StreamApply, d: &mut Dispatcher, bytes: &[u8]) -> Vec<Control> {
    let mut framer = CommandFramer::new();
    framer.push(bytes);
    let mut out = Vec::new();
    while let Some(frame) = framer.next_frame().expect("a valid stream") {
        let c = apply.on_frame(frame, d).expect("the stream applies");
        if c != Control::None {
            out.push(c);
        }
    }
    assert_eq!(
        framer.buffered(),
        0,
        "the stream ends on a command boundary"
    );
    out
}

/// Poll `flag` for up to `wait`; true once it is set.
fn becomes_true(flag: &AtomicBool, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    flag.load(Ordering::SeqCst)
}

#[test]
fn keys_go_to_their_partition_in_order() {
    let (t, mut d) = setup(4, 16, 0);
    let mut off = 0;
    for round in 0..5 {
        for k in 0..200 {
            let key = format!("key:{k}");
            d.push(
                d.writer_for(key.as_bytes()),
                op(&["RPUSH", &key, &round.to_string()], false),
                off,
                off + 1,
            )
            .unwrap();
            off += 1;
            if off % 37 == 0 {
                d.flush().unwrap();
            }
        }
    }
    d.barrier().unwrap();
    let log = t.log();
    assert!(
        log.iter().all(|w| w.len() > 1),
        "every writer got several batches"
    );
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (w, cmds) in commands(&log).into_iter().enumerate() {
        for c in cmds {
            assert_eq!(partition(c[1].as_bytes(), 4), w, "{c:?} on writer {w}");
            seen.entry(c[1].clone()).or_default().push(c[2].clone());
        }
    }
    assert_eq!(seen.len(), 200);
    let order: Vec<String> = (0..5).map(|r| r.to_string()).collect();
    for (k, rounds) in &seen {
        assert_eq!(rounds, &order, "{k}");
        let list = t.get(0, k.as_bytes());
        assert_eq!(
            list,
            Some(Value::List(
                order.iter().map(|r| Bytes::from(r.clone())).collect()
            ))
        );
    }
    // Batches of one writer follow each other without gaps in their offsets' order.
    for w in &log {
        assert!(
            w.windows(2).all(|p| p[0].end <= p[1].start),
            "in dispatch order"
        );
    }
    assert_eq!(d.tracker.applied(), 1000);
}

#[test]
fn batches_split_at_the_op_and_byte_limits() {
    let (t, mut d) = setup(1, 16, 0);
    for i in 0..1200u64 {
        d.push(0, op(&["INCR", "n"], false), i, i + 1).unwrap();
    }
    d.barrier().unwrap();
    let sizes: Vec<usize> = t.log()[0].iter().map(|b| b.ops.len()).collect();
    assert_eq!(sizes, vec![512, 512, 176]);
    assert_eq!(t.get(0, b"n"), s("1200"));
    let ranges: Vec<(u64, u64)> = t.log()[0].iter().map(|b| (b.start, b.end)).collect();
    assert_eq!(ranges, vec![(0, 512), (512, 1024), (1024, 1200)]);

    // 40 KiB values: the fourth op passes 128 KiB and closes the batch.
    let (t, mut d) = setup(1, 16, 0);
    let big = "x".repeat(40 * 1024);
    for i in 0..10u64 {
        d.push(0, op(&["SET", &format!("big:{i}"), &big], true), i, i + 1)
            .unwrap();
    }
    d.barrier().unwrap();
    let sizes: Vec<usize> = t.log()[0].iter().map(|b| b.ops.len()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    assert_eq!(t.model().dbs[&0].len(), 10);
}

#[test]
fn set_skip_leaves_out_what_was_applied() {
    let (t, mut d) = setup(2, 16, 0);
    d.set_skip(vec![9, 0]);
    for k in 0..10u64 {
        let (a, b) = (2 * k, 2 * k + 1);
        d.push(
            0,
            op(&["SET", &format!("w0:{}", a + 1), "v"], true),
            a,
            a + 1,
        )
        .unwrap();
        d.push(
            1,
            op(&["SET", &format!("w1:{}", b + 1), "v"], true),
            b,
            b + 1,
        )
        .unwrap();
    }
    d.barrier().unwrap();
    let keys: Vec<String> = t
        .dump()
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    let w0: Vec<&String> = keys.iter().filter(|k| k.starts_with("w0:")).collect();
    let mut expect: Vec<String> = (5..10).map(|k| format!("w0:{}", 2 * k + 1)).collect();
    expect.sort();
    assert_eq!(
        w0,
        expect.iter().collect::<Vec<_>>(),
        "ends up to 9 skipped on writer 0"
    );
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("w1:")).count(),
        10,
        "writer 1 skips nothing"
    );
    assert_eq!(
        t.log()[0][0].start,
        10,
        "the batch opens after the skipped ops"
    );
    assert_eq!(d.tracker.applied(), 20);
}

#[test]
fn records_carry_the_replid_and_the_batch_end() {
    let (t, mut d) = setup(2, 16, 100);
    d.set_exactly_once(exactly_once());
    let (a, b) = ("a", "b");
    let (wa, wb) = (d.writer_for(a.as_bytes()), d.writer_for(b.as_bytes()));
    assert_ne!(wa, wb, "the keys were chosen for two writers");
    d.push(wa, op(&["SET", a, "1"], true), 100, 110).unwrap();
    d.push(wb, op(&["INCR", b], false), 110, 120).unwrap();
    d.flush().unwrap();
    d.push(wa, op(&["INCR", a], false), 120, 130).unwrap();
    d.push(wb, op(&["SET", b, "7"], true), 130, 140).unwrap();
    d.barrier().unwrap();
    let log = t.log();
    for (w, expect) in [
        (wa, [(110, false), (130, true)]),
        (wb, [(120, true), (140, false)]),
    ] {
        assert_eq!(log[w].len(), 2);
        for (seq, (batch, (end, transaction))) in log[w].iter().zip(expect).enumerate() {
            let (key, value) = batch.record.clone().expect("a record");
            assert_eq!(key, Bytes::from(record::key(PREFIX, "src", w)));
            let r = Record::decode(&value).unwrap();
            assert_eq!(
                (r.replid.as_str(), r.end, r.seq),
                (REPLID, end, seq as u64 + 1)
            );
            assert_eq!(batch.end, end);
            assert_eq!(batch.transaction, transaction, "writer {w} batch {seq}");
        }
    }
    let keys = record::keys(PREFIX, "src", 2);
    let read = t.read_db0(&keys).unwrap();
    let expect: Vec<Option<Bytes>> = (0..2)
        .map(|w| log[w][1].record.clone().map(|r| r.1))
        .collect();
    assert_eq!(
        read, expect,
        "the last record of each writer is on the target"
    );
    assert_eq!(t.get(0, b"a"), s("2"));
    assert_eq!(t.get(0, b"b"), s("7"));
}

#[test]
fn barrier_waits_for_the_target() {
    let (t, mut d) = setup(2, 16, 0);
    t.pause();
    d.push(0, op(&["SET", "k", "v"], true), 0, 5).unwrap();
    let resumed = Arc::new(AtomicBool::new(false));
    let (t2, r2) = (t.clone(), resumed.clone());
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        r2.store(true, Ordering::SeqCst);
        t2.resume();
    });
    d.barrier().unwrap();
    assert!(
        resumed.load(Ordering::SeqCst),
        "the barrier returned before the target applied"
    );
    assert_eq!(t.get(0, b"k"), s("v"));
    assert_eq!((d.tracker.in_flight(), d.tracker.applied()), (0, 5));
    h.join().unwrap();
}

#[test]
fn barrier_returns_the_failure_of_the_target() {
    let (t, mut d) = setup(2, 16, 0);
    t.pause();
    d.push(1, op(&["SET", "k", "v"], true), 0, 5).unwrap();
    d.flush().unwrap();
    let t2 = t.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        t2.fail_with(WriterFailure::Aborted);
    });
    let r = d.barrier();
    assert!(
        matches!(
            r,
            Err(PipelineError::Pool(PoolError::Failed(
                WriterFailure::Aborted
            )))
        ),
        "{r:?}"
    );
    h.join().unwrap();
    t.resume();
    assert_eq!(t.get(0, b"k"), None, "a failed target applies nothing more");
    assert_eq!(d.tracker.applied(), 0);
    d.push(1, op(&["SET", "k", "w"], true), 5, 6).unwrap();
    assert!(matches!(
        d.flush(),
        Err(PipelineError::Pool(PoolError::Failed(_)))
    ));
}

#[test]
fn a_paused_target_holds_the_sender_back() {
    let (t, mut d) = setup(1, 2, 0);
    t.pause();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let h = std::thread::spawn(move || {
        for i in 0..10u64 {
            d.push(0, op(&["RPUSH", "l", &i.to_string()], false), i, i + 1)?;
            d.flush()?;
        }
        done2.store(true, Ordering::SeqCst);
        Ok::<Dispatcher, PipelineError>(d)
    });
    assert!(
        !becomes_true(&done, Duration::from_millis(300)),
        "the sender went on while the target was paused"
    );
    assert_eq!(t.queued(0), 2, "the queue is full");
    assert!(t.log()[0].is_empty());
    t.resume();
    assert!(
        becomes_true(&done, Duration::from_secs(10)),
        "the sender is still blocked"
    );
    let mut d = h.join().unwrap().unwrap();
    d.barrier().unwrap();
    let items: Vec<Bytes> = (0..10).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(t.get(0, b"l"), Some(Value::List(items.into())));
    assert_eq!(t.log()[0].len(), 10);
}

fn stream_setup(
    writers: usize,
    start: u64,
    opts: StreamOptions,
) -> (Arc<MemoryTarget>, Dispatcher, StreamApply) {
    let (t, mut d) = setup(writers, 16, start);
    d.set_exactly_once(exactly_once());
    (t, d, StreamApply::new(opts, start, 0))
}

/// Two keys that land on different writers of 4.
fn split_keys() -> (String, String) {
    let a = "acct:1".to_string();
    let wa = partition(a.as_bytes(), 4);
    let b = (2..100)
        .map(|i| format!("acct:{i}"))
        .find(|k| partition(k.as_bytes(), 4) != wa)
        .expect("some key on another writer");
    (a, b)
}

#[test]
fn multi_exec_is_one_atomic_op_on_one_writer() {
    let (t, mut d, mut apply) = stream_setup(4, 0, StreamOptions::default());
    let (a, b) = split_keys();
    let bytes = stream(&[
        &["MULTI"],
        &["SET", &a, "10"],
        &["INCRBY", &a, "5"],
        &["EXEC"],
        &["MULTI"],
        &["SET", &a, "1"],
        &["SET", &b, "2"],
        &["EXEC"],
    ]);
    feed(&mut apply, &mut d, &bytes);
    d.barrier().unwrap();
    let log = t.log();
    let wa = partition(a.as_bytes(), 4);
    let one = &log[wa][0];
    assert_eq!(one.ops.len(), 1);
    assert!(one.ops[0].atomic && one.transaction);
    let cmds: Vec<Vec<String>> = one.commands().iter().map(|c| strs(c)).collect();
    assert_eq!(
        cmds,
        vec![
            vec!["SET".to_string(), a.clone(), "10".into()],
            vec!["INCRBY".into(), a.clone(), "5".into()]
        ]
    );
    // Two writers' keys: one op all the same, run as a barrier on writer 0.
    let two = log[0].last().expect("writer 0 ran the second block");
    assert_eq!(two.ops.len(), 1);
    assert!(two.ops[0].atomic);
    assert_eq!(two.ops[0].commands.len(), 2);
    let batches: usize = log.iter().map(|w| w.len()).sum();
    assert_eq!(batches, 2, "{log:?}");
    assert_eq!(
        (t.get(0, a.as_bytes()), t.get(0, b.as_bytes())),
        (s("1"), s("2"))
    );
    assert_eq!(d.tracker.applied(), bytes.len() as u64);
}

#[test]
fn replayable_batches_go_without_a_transaction() {
    let (t, mut d, mut apply) = stream_setup(1, 0, StreamOptions::default());
    let first = stream(&[
        &["SET", "a", "1"],
        &["HSET", "h", "f", "v"],
        &["SADD", "s", "x", "y"],
        &["DEL", "gone"],
    ]);
    feed(&mut apply, &mut d, &first);
    d.barrier().unwrap();
    let second = stream(&[&["SET", "b", "1"], &["INCR", "b"], &["ZADD", "z", "1", "m"]]);
    feed(&mut apply, &mut d, &second);
    d.barrier().unwrap();
    let log = t.log();
    let flags: Vec<(bool, usize)> = log[0]
        .iter()
        .map(|b| (b.transaction, b.ops.len()))
        .collect();
    assert_eq!(flags, vec![(false, 4), (true, 3)]);
    assert!(log[0][0].ops.iter().all(|o| o.replayable && !o.atomic));
    assert!(!log[0][1].ops[1].replayable, "INCR reads before it writes");
    assert_eq!(t.get(0, b"b"), s("2"));
    let end = Record::decode(&log[0][1].record.clone().unwrap().1)
        .unwrap()
        .end;
    assert_eq!(end, (first.len() + second.len()) as u64);
}

#[test]
fn select_sets_the_database_of_what_follows() {
    let (t, mut d, mut apply) = stream_setup(2, 0, StreamOptions::default());
    let bytes = stream(&[
        &["SET", "a", "0"],
        &["SELECT", "3"],
        &["SET", "a", "3"],
        &["RPUSH", "l", "x", "y"],
        &["SELECT", "5"],
        &["SET", "a", "5"],
        &["MULTI"],
        &["SELECT", "6"],
        &["SET", "a", "6"],
        &["EXEC"],
        &["SET", "b", "6"],
    ]);
    feed(&mut apply, &mut d, &bytes);
    d.barrier().unwrap();
    assert_eq!(apply.current_db(), 6);
    let content: Vec<String> = t
        .dump()
        .into_iter()
        .filter(|l| !l.contains(PREFIX))
        .collect();
    assert_eq!(
        content,
        vec![
            "0 a string \"0\"",
            "3 a string \"3\"",
            "3 l list [x, y]",
            "5 a string \"5\"",
            "6 a string \"6\"",
            "6 b string \"6\"",
        ]
    );
    assert!(t.errors().is_empty(), "{:?}", t.errors());
}

#[test]
fn filters_drop_and_map_databases_and_keys() {
    let filter = KeyFilter {
        dbs: Some(vec![0, 2]),
        db_map: [(2, 7)].into_iter().collect(),
        exclude_prefixes: vec![Bytes::from_static(b"tmp:")],
        ..KeyFilter::default()
    };
    let opts = StreamOptions {
        filter: Arc::new(filter),
        ..StreamOptions::default()
    };
    let (t, mut d, mut apply) = stream_setup(2, 0, opts);
    let bytes = stream(&[
        &["SET", "keep", "1"],
        &["SET", "tmp:x", "1"],
        &["SET", "keep2", "1"],
        &["DEL", "keep2", "tmp:y"],
        &["SELECT", "1"],
        &["SET", "one", "1"],
        &["SELECT", "2"],
        &["SET", "two", "2"],
        &["HSET", "tmp:h", "f", "v"],
    ]);
    feed(&mut apply, &mut d, &bytes);
    d.barrier().unwrap();
    let content: Vec<String> = t
        .dump()
        .into_iter()
        .filter(|l| !l.contains(PREFIX))
        .collect();
    assert_eq!(content, vec!["0 keep string \"1\"", "7 two string \"2\""]);
    let all: Vec<Vec<String>> = commands(&t.log()).concat();
    assert!(
        all.contains(&vec!["DEL".to_string(), "keep2".into()]),
        "DEL cut to its copied key: {all:?}"
    );
    assert!(
        !all.iter()
            .flatten()
            .any(|a| a.starts_with("tmp:") || a == "one"),
        "{all:?}"
    );
    assert_eq!(
        apply.stats.filtered, 4,
        "tmp:x, the DEL's tmp:y, one, tmp:h"
    );
    assert_eq!(d.tracker.applied(), bytes.len() as u64);
}

#[test]
fn internal_traffic_only_advances_the_offset() {
    let (t, mut d, mut apply) = stream_setup(2, 500, StreamOptions::default());
    let mut bytes = stream(&[&["PING"], &["REPLCONF", "GETACK", "*"]]);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend(stream(&[&["PING"]]));
    let mut framer = CommandFramer::new();
    framer.push(&bytes);
    let mut controls = Vec::new();
    while let Some(frame) = framer.next_frame().unwrap() {
        controls.push(apply.on_frame(frame, &mut d).unwrap());
        // Each frame on its own counts as applied: nothing waits for later traffic.
        assert_eq!(d.tracker.applied(), apply.offset());
    }
    assert_eq!(
        controls,
        vec![
            Control::None,
            Control::AckRequested,
            Control::None,
            Control::None
        ]
    );
    d.barrier().unwrap();
    assert!(
        t.log().iter().all(|w| w.is_empty()),
        "nothing reached the target"
    );
    assert_eq!(apply.offset(), 500 + bytes.len() as u64);
    assert_eq!(d.tracker.applied(), 500 + bytes.len() as u64);
    assert_eq!(apply.stats.internal, 3);
}

#[test]
fn the_applied_offset_ends_at_the_stream_length() {
    let (t, mut d, mut apply) = stream_setup(4, 1000, StreamOptions::default());
    let beat = format!("{PREFIX}heartbeat:src");
    let mut bytes = Vec::new();
    for i in 0..300 {
        let k = format!("k{}", i % 17);
        bytes.extend(stream(&[&["INCR", &k], &["PING"]]));
        if i % 50 == 0 {
            bytes.extend(stream(&[
                &["MULTI"],
                &["SET", "m", &i.to_string()],
                &["EXEC"],
                &["SELECT", "0"],
            ]));
        }
    }
    bytes.extend(stream(&[&["SET", &beat, "1700000000123"]]));
    let controls = feed(&mut apply, &mut d, &bytes);
    let end = 1000 + bytes.len() as u64;
    assert_eq!(
        controls,
        vec![Control::Heartbeat {
            stamp_us: 1_700_000_000_123_000,
            end
        }]
    );
    d.barrier().unwrap();
    assert_eq!(d.tracker.applied(), end);
    assert_eq!(
        t.get(0, beat.as_bytes()),
        None,
        "the heartbeat is not forwarded"
    );
    assert_eq!(t.get(0, b"k0"), s("18"));
    assert_eq!(t.get(0, b"m"), s("250"));
    let last_ends: Vec<u64> = t
        .log()
        .iter()
        .filter_map(|w| w.last())
        .map(|b| b.end)
        .collect();
    assert!(
        last_ends.iter().all(|e| *e <= end)
            && last_ends.contains(
                &(end
                    - resp(&["SET", &beat, "1700000000123"]).len() as u64
                    - resp(&["PING"]).len() as u64)
            )
    );
}

#[test]
fn flushdb_on_a_shared_target_is_a_scoped_flush() {
    let opts = StreamOptions {
        shared_target: true,
        ..StreamOptions::default()
    };
    let (t, mut d, mut apply) = stream_setup(2, 0, opts);
    let before = stream(&[&["SET", "a", "1"], &["SELECT", "2"], &["SET", "b", "1"]]);
    let flush = resp(&["FLUSHDB"]);
    let mut bytes = before.clone();
    bytes.extend_from_slice(&flush);
    let mut framer = CommandFramer::new();
    framer.push(&bytes);
    let mut controls = Vec::new();
    while let Some(frame) = framer.next_frame().unwrap() {
        let c = apply.on_frame(frame, &mut d).unwrap();
        if c != Control::None {
            // Everything before the flush is applied when it is handed to the caller.
            assert_eq!(
                (d.tracker.in_flight(), d.tracker.applied()),
                (0, before.len() as u64)
            );
            controls.push(c);
        }
    }
    let end = bytes.len() as u64;
    assert_eq!(controls, vec![Control::ScopedFlush { db: Some(2), end }]);
    d.advance(end);
    d.barrier().unwrap();
    assert_eq!(
        t.get(2, b"b"),
        s("1"),
        "the relay did not flush the shared target"
    );
    let all: Vec<Vec<String>> = commands(&t.log()).concat();
    assert!(
        !all.iter().any(|c| c[0].eq_ignore_ascii_case("FLUSHDB")),
        "{all:?}"
    );
    assert_eq!(d.tracker.applied(), end);

    // On a target of its own the FLUSHDB itself goes.
    let (t, mut d, mut apply) = stream_setup(2, 0, StreamOptions::default());
    assert!(feed(&mut apply, &mut d, &bytes).is_empty());
    d.barrier().unwrap();
    assert_eq!((t.get(0, b"a"), t.get(2, b"b")), (s("1"), None));
}

#[test]
fn the_model_reports_what_it_cannot_run() {
    let (t, mut d) = setup(1, 4, 0);
    d.push(0, op(&["SET", "s", "v"], true), 0, 1).unwrap();
    d.push(0, op(&["GEOADD", "g", "1", "2", "m"], false), 1, 2)
        .unwrap();
    d.push(0, op(&["RPUSH", "s", "x"], false), 2, 3).unwrap();
    d.push(0, op(&["EXPIRE", "s", "10"], false), 3, 4).unwrap();
    d.barrier().unwrap();
    let replies: Vec<(String, String)> = t
        .errors()
        .into_iter()
        .map(|e| (e.command, e.reply))
        .collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].0 == "GEOADD g 1 2 m" && replies[0].1.starts_with("ERR unknown command"));
    assert!(replies[1].1.starts_with("WRONGTYPE"));
    assert_eq!(t.get(0, b"s"), s("v"));
    assert_eq!(t.dump(), vec!["0 s string \"v\" expire InMs(10000)"]);
    assert_eq!(d.tracker.target_errors.load(Ordering::Relaxed), 2);
}
