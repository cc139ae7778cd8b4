//! The writer pool against a real Redis: a small batch handed to an idle writer is written by
//! the handing thread itself (a "lone write", `target::writer::Lane`), the others go through
//! the writer's channel. These tests check what that shortcut must never change: each
//! source's batches apply in the order they were handed over, whichever way each went, and a
//! connection killed under lone writes loses nothing and applies nothing twice.
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_relay::batch::{Batch, Bookkeeping, Op, Record, SourceTracker};
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::encode_command;
use redis_relay::resp::Reply;
use redis_relay::target::{WriterOptions, WriterPool};
use support::RedisServer;

fn encode(cmds: &[Vec<String>]) -> Bytes {
    let mut out = BytesMut::new();
    for c in cmds {
        encode_command(&mut out, c);
    }
    out.freeze()
}

fn options() -> WriterOptions {
    WriterOptions {
        writers: 1,
        queue: 4,
        max_in_flight: 4,
        reply_timeout: Duration::from_secs(10),
        ..WriterOptions::default()
    }
}

fn list(server: &RedisServer, key: &str) -> Vec<u64> {
    match server.client().cmd(&["LRANGE", key, "0", "-1"]) {
        Reply::Array(Some(items)) => items
            .into_iter()
            .map(|r| match r {
                Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).parse().unwrap(),
                other => panic!("{key}: unexpected element {other:?}"),
            })
            .collect(),
        other => panic!("LRANGE {key}: {other:?}"),
    }
}

/// Two sources share one writer. Each hands over lone-sized batches (one RPUSH) and, every
/// seventh, a batch too large for the shortcut (300 RPUSHes), so both paths carry each
/// source's list; the list must come out in order.
#[test]
fn each_source_keeps_its_order_across_lone_and_queued_batches() {
    let target = RedisServer::start(&[]);
    let ep = Endpoint::parse(&target.url()).unwrap();
    let pool = WriterPool::start(&ep, &options()).unwrap();
    let mut threads = Vec::new();
    let batches = 2_000u64;
    for s in 0..2 {
        let handle = pool.handle();
        threads.push(std::thread::spawn(move || {
            let tracker = Arc::new(SourceTracker::new(format!("s{s}"), s, 1, 0));
            let key = format!("order:{s}");
            let mut next = 0u64;
            for b in 0..batches {
                let n = if b % 7 == 6 { 300 } else { 1 };
                let cmds: Vec<Vec<String>> = (next..next + n)
                    .map(|i| vec!["RPUSH".into(), key.clone(), i.to_string()])
                    .collect();
                next += n;
                tracker.dispatched(0, b, b + 1);
                let op = Op::new(0, encode(&cmds), n as u32);
                let batch = Batch {
                    tracker: tracker.clone(),
                    ops: vec![op],
                    start: b,
                    end: b + 1,
                    bookkeeping: None,
                };
                handle.send(0, batch).unwrap();
                // Room now and then for the writer to go idle, so that small batches go lone
                // between queued ones (on a loaded machine they may all queue).
                if b % 5 == 4 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            assert!(
                tracker.wait_drained(Duration::from_secs(60)),
                "source {s} drained"
            );
            next
        }));
    }
    let totals: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mixed = pool.state.lone_writes.load(Ordering::Relaxed);
    eprintln!("{mixed} of {} batches went lone", 2 * batches);
    // The writer is idle now: a small batch goes lone (retried: the writer thread may hold
    // its connection for a moment to flush).
    let handle = pool.handle();
    let tracker = Arc::new(SourceTracker::new("idle", 2, 1, 0));
    for b in 0..20u64 {
        if pool.state.lone_writes.load(Ordering::Relaxed) > mixed {
            break;
        }
        let cmds = vec![vec!["RPUSH".to_string(), "idle".to_string(), b.to_string()]];
        tracker.dispatched(0, b, b + 1);
        let batch = Batch {
            tracker: tracker.clone(),
            ops: vec![Op::new(0, encode(&cmds), 1)],
            start: b,
            end: b + 1,
            bookkeeping: None,
        };
        handle.send(0, batch).unwrap();
        assert!(tracker.wait_drained(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(handle);
    let lone = pool.state.lone_writes.load(Ordering::Relaxed);
    pool.finish().unwrap();
    for (s, total) in totals.into_iter().enumerate() {
        let got = list(&target, &format!("order:{s}"));
        assert_eq!(got.len() as u64, total, "source {s}: every element once");
        let first_wrong = got.iter().enumerate().find(|(i, v)| *i as u64 != **v);
        assert!(
            first_wrong.is_none(),
            "source {s}: out of order at {first_wrong:?}"
        );
    }
    // Both paths were taken: the large batches never go lone, and an idle writer takes a
    // small one from the handing thread.
    assert!(
        lone > mixed,
        "a batch to an idle writer was not written lone"
    );
    assert!(mixed < 2 * batches, "every batch went lone: {mixed}");
}

/// One source's batches each INCR a counter in MULTI/EXEC with the source's record, mostly as
/// lone writes, while another client kills the writer's connection again and again. Every
/// batch must apply exactly once: the counter ends at the number of batches.
#[test]
fn lone_writes_on_killed_connections_apply_exactly_once() {
    let target = RedisServer::start(&[]);
    let ep = Endpoint::parse(&target.url()).unwrap();
    let pool = WriterPool::start(&ep, &options()).unwrap();
    let handle = pool.handle();
    let tracker = Arc::new(SourceTracker::new("killed", 0, 1, 0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let mut c = target.client();
        std::thread::spawn(move || {
            let mut kills = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(15));
                // The test's own clients are idle; SKIPME keeps this one.
                if let Reply::Integer(n) =
                    c.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                {
                    kills += n as u64;
                }
            }
            kills
        })
    };
    let batches = 3_000u64;
    let started = Instant::now();
    for b in 0..batches {
        let cmds = vec![vec!["INCR".to_string(), "counted".to_string()]];
        let record = Record {
            replid: "0123456789abcdef0123456789abcdef01234567".into(),
            end: b + 1,
            run: "lonetest".into(),
            seq: b + 1,
        };
        tracker.dispatched(0, b, b + 1);
        let batch = Batch {
            tracker: tracker.clone(),
            ops: vec![Op::new(0, encode(&cmds), 1)],
            start: b,
            end: b + 1,
            bookkeeping: Some(Bookkeeping {
                key: Bytes::from_static(b"redis-relay:lonetest:0"),
                value: record.encode(),
                transaction: true,
            }),
        };
        handle.send(0, batch).unwrap();
        // Some room between batches, so that the writer is often idle (lone writes).
        if b % 4 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(
        tracker.wait_drained(Duration::from_secs(120)),
        "every batch acknowledged ({:?})",
        started.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    let lone = pool.state.lone_writes.load(Ordering::Relaxed);
    let reconnects = pool.state.reconnects.load(Ordering::Relaxed);
    drop(handle);
    pool.finish().unwrap();
    eprintln!("{batches} batches: {lone} lone writes, {kills} connections killed, {reconnects} reconnects");
    let counted = target.client().cmd(&["GET", "counted"]);
    assert_eq!(
        counted,
        Reply::Bulk(Some(Bytes::from(batches.to_string()))),
        "{kills} kills, {reconnects} reconnects, {lone} lone writes"
    );
    assert!(
        reconnects > 0 && kills > 0,
        "the connection was never killed"
    );
    // Most go lone on a quiet machine (2,671 of 3,000 here); at least a tenth on a busy one,
    // where replies come back slower and a full in-flight queue sends batches to the channel.
    assert!(
        lone >= batches / 10,
        "only {lone} of {batches} batches went lone"
    );
}
