//! `target::deletion` against real servers: a target and two peer masters as `redis-server`
//! processes. A key may only be deleted when it is proven to be the relay's own: no peer holds
//! it, nobody wrote it on the target since the check, and every peer that might hold it
//! answered.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::Reply;
use redis_relay::target::deletion::{retry, sweep, Authority, DeletionError, Plan, Report, Scope};
use support::{Client, RedisServer};

fn ep(s: &RedisServer) -> Endpoint {
    Endpoint::new("127.0.0.1", s.port)
}

fn put(c: &mut Client, db: u32, keys: &[&str]) {
    c.cmd(&["SELECT", &db.to_string()]);
    for k in keys {
        c.cmd(&["SET", k, "v"]);
    }
}

fn exists(c: &mut Client, db: u32, key: &str) -> bool {
    c.cmd(&["SELECT", &db.to_string()]);
    c.cmd(&["EXISTS", key]) == Reply::Integer(1)
}

/// The keys of `db` on a server, sorted.
fn keys(c: &mut Client, db: u32) -> BTreeSet<String> {
    c.cmd(&["SELECT", &db.to_string()]);
    match c.cmd(&["KEYS", "*"]) {
        Reply::Array(Some(ks)) => ks.iter().filter_map(|k| k.as_text()).collect(),
        other => panic!("KEYS: {other:?}"),
    }
}

fn set_of(ks: &[&str]) -> BTreeSet<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

/// Sweep, collecting the deferred keys.
fn run(plan: &Plan, scope: Scope) -> (Report, Vec<(u32, Bytes)>) {
    let mut deferred = Vec::new();
    let report = sweep(plan, scope, &mut |db, k| deferred.push((db, k))).expect("sweep");
    (report, deferred)
}

fn deferred_names(d: &[(u32, Bytes)]) -> BTreeSet<String> {
    d.iter()
        .map(|(_, k)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

struct Three {
    target: RedisServer,
    p0: RedisServer,
    p1: RedisServer,
}

/// Target holding `a*` (also on peer 0), `b*` (also on peer 1), stale `s*`, the relay's own
/// `relay:*` and a key `keep` excludes.
fn three() -> Three {
    let t = Three {
        target: RedisServer::start(&[]),
        p0: RedisServer::start(&[]),
        p1: RedisServer::start(&[]),
    };
    put(&mut t.p0.client(), 0, &["a1", "a2"]);
    put(&mut t.p1.client(), 0, &["b1", "b2"]);
    put(
        &mut t.target.client(),
        0,
        &[
            "a1",
            "a2",
            "b1",
            "b2",
            "s1",
            "s2",
            "s3",
            "relay:offsets",
            "filtered",
        ],
    );
    t
}

fn own_or_filtered(_db: u32, k: &[u8]) -> bool {
    k.starts_with(b"relay:") || k == b"filtered"
}

fn keys_on_peers_kept_stale_deleted_own_untouched_with(precheck: bool) {
    let t = three();
    let auth = Authority::Peers(vec![ep(&t.p0), ep(&t.p1)]);
    let target = ep(&t.target);
    let mut plan = Plan::new(&target, &auth);
    plan.precheck = precheck;
    plan.keep = &own_or_filtered;
    let (r, deferred) = run(&plan, Scope::Db(0));
    assert!(deferred.is_empty(), "{deferred:?}");
    assert_eq!(r.scanned, 9);
    assert_eq!(r.kept_by_rule, 2);
    assert_eq!(r.kept_on_peer, 4);
    assert_eq!(r.deleted, 3);
    assert_eq!(r.deferred, 0);
    assert_eq!(r.watch_aborts, 0);
    assert!(r.peers_down.is_empty());
    assert_eq!(
        keys(&mut t.target.client(), 0),
        set_of(&["a1", "a2", "b1", "b2", "relay:offsets", "filtered"])
    );
    // Peers are only read.
    assert_eq!(keys(&mut t.p0.client(), 0), set_of(&["a1", "a2"]));
}

#[test]
fn all_dbs_and_peer_db_mapping() {
    let target = RedisServer::start(&[]);
    let p0 = RedisServer::start(&[]);
    let p1 = RedisServer::start(&[]);
    // Peers' db 1 lands in target db 0; db 2 stays db 2.
    put(&mut p0.client(), 1, &["x0"]);
    put(&mut p1.client(), 1, &["y0"]);
    // In the peers' db 0, which does not land in target db 0: no proof of ownership there.
    put(&mut p0.client(), 0, &["z0"]);
    put(&mut p1.client(), 2, &["x2"]);
    let mut tc = target.client();
    put(&mut tc, 0, &["x0", "y0", "z0", "s0"]);
    put(&mut tc, 2, &["x2", "s2"]);
    put(&mut tc, 5, &["s5"]);
    let auth = Authority::Peers(vec![ep(&p0), ep(&p1)]);
    let tep = ep(&target);
    let map = |db: u32| if db == 0 { vec![1] } else { vec![db] };
    let mut plan = Plan::new(&tep, &auth);
    plan.peer_dbs = &map;
    let (r, deferred) = run(&plan, Scope::AllDbs);
    assert!(deferred.is_empty());
    assert_eq!(r.scanned, 7);
    assert_eq!(r.deleted, 4, "{r:?}");
    assert_eq!(r.kept_on_peer, 3);
    assert_eq!(keys(&mut tc, 0), set_of(&["x0", "y0"]));
    assert_eq!(keys(&mut tc, 2), set_of(&["x2"]));
    assert!(keys(&mut tc, 5).is_empty());

    // A single db leaves the others alone.
    put(&mut tc, 0, &["s0"]);
    put(&mut tc, 2, &["s2"]);
    let (r, _) = run(&plan, Scope::Db(2));
    assert_eq!((r.scanned, r.deleted), (2, 1));
    assert!(exists(&mut tc, 0, "s0"));
}

fn a_peer_down_defers_then_retry_settles_with(precheck: bool) {
    let Three { target, p0, p1 } = three();
    let p1_port = p1.port;
    let auth = Authority::Peers(vec![ep(&p0), ep(&p1)]);
    // Stop peer 1: nobody can tell whether b1, b2 and the s* keys are its.
    drop(p1);
    let target_ep = ep(&target);
    let mut plan = Plan::new(&target_ep, &auth);
    plan.precheck = precheck;
    plan.keep = &own_or_filtered;
    let (r, deferred) = run(&plan, Scope::Db(0));
    assert_eq!(r.deleted, 0, "{r:?}");
    assert_eq!(r.kept_on_peer, 2);
    assert_eq!(r.deferred, 5);
    assert_eq!(
        deferred_names(&deferred),
        set_of(&["b1", "b2", "s1", "s2", "s3"])
    );
    assert!(deferred.iter().all(|(db, _)| *db == 0));
    assert_eq!(r.peers_down, vec![format!("127.0.0.1:{p1_port}")]);
    assert_eq!(keys(&mut target.client(), 0).len(), 9);

    // The peer is back (its data restored, as after a restart from its RDB).
    let back = RedisServer::start_on(p1_port, &[]);
    put(&mut back.client(), 0, &["b1", "b2"]);
    let mut again = Vec::new();
    let r = retry(&plan, &mut deferred.into_iter(), &mut |db, k| {
        again.push((db, k))
    })
    .expect("retry");
    assert!(again.is_empty());
    assert_eq!((r.scanned, r.kept_on_peer, r.deleted), (5, 2, 3), "{r:?}");
    assert!(r.peers_down.is_empty());
    assert_eq!(
        keys(&mut target.client(), 0),
        set_of(&["a1", "a2", "b1", "b2", "relay:offsets", "filtered"])
    );
}

#[test]
fn a_hung_peer_times_out_and_defers() {
    let t = three();
    let auth = Authority::Peers(vec![ep(&t.p0), ep(&t.p1)]);
    let target = ep(&t.target);
    let mut plan = Plan::new(&target, &auth);
    plan.keep = &own_or_filtered;
    plan.timeout = Duration::from_millis(300);
    let pid = t.p0.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let result = sweep(&plan, Scope::Db(0), &mut |_, _| {});
    let elapsed = start.elapsed();
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    let r = result.expect("sweep");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // b* are on peer 1, which answered; a* and s* are in doubt.
    assert_eq!((r.kept_on_peer, r.deferred, r.deleted), (2, 5, 0), "{r:?}");
    assert_eq!(r.peers_down, vec![t.p0.addr()]);
}

#[test]
fn unknown_deletes_nothing_exclusive_deletes_all() {
    let t = three();
    let target = ep(&t.target);
    let unknown = Authority::Unknown;
    let mut plan = Plan::new(&target, &unknown);
    plan.keep = &own_or_filtered;
    let (r, deferred) = run(&plan, Scope::Db(0));
    assert!(deferred.is_empty());
    assert_eq!((r.unattributed, r.deleted, r.peer_round_trips), (7, 0, 0));
    assert_eq!(keys(&mut t.target.client(), 0).len(), 9);

    let exclusive = Authority::Exclusive;
    plan.authority = &exclusive;
    let (r, _) = run(&plan, Scope::Db(0));
    assert_eq!((r.deleted, r.kept_on_peer, r.peer_round_trips), (7, 0, 0));
    assert_eq!(
        keys(&mut t.target.client(), 0),
        set_of(&["relay:offsets", "filtered"])
    );

    // A pool of one backend: no peers at all, so the same.
    put(&mut t.target.client(), 0, &["s1"]);
    let alone = Authority::Peers(vec![]);
    plan.authority = &alone;
    let (r, _) = run(&plan, Scope::Db(0));
    assert_eq!(r.deleted, 1);
}

fn watch_guard_redoes_a_batch_written_meanwhile_with(precheck: bool) {
    let t = three();
    let auth = Authority::Peers(vec![ep(&t.p0), ep(&t.p1)]);
    let target = ep(&t.target);
    let other_target = Mutex::new(t.target.client());
    let other_peer = Mutex::new(t.p1.client());
    let fired = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    // Another relay writes `s1` on the target and its master holds it from now on; it happens
    // after the WATCH and before our peer check saw it.
    let meanwhile = |_db: u32, _k: &[u8]| {
        calls.fetch_add(1, Ordering::SeqCst);
        if !fired.swap(true, Ordering::SeqCst) {
            other_target.lock().unwrap().cmd(&["SET", "s1", "theirs"]);
            other_peer.lock().unwrap().cmd(&["SET", "s1", "theirs"]);
        }
        true
    };
    let mut plan = Plan::new(&target, &auth);
    plan.precheck = precheck;
    plan.keep = &own_or_filtered;
    plan.still_candidate = &meanwhile;
    let (r, deferred) = run(&plan, Scope::Db(0));
    assert!(deferred.is_empty());
    assert!(r.watch_aborts >= 1, "{r:?}");
    assert_eq!((r.deleted, r.kept_on_peer), (2, 5), "{r:?}");
    // Twice: 7 candidates, or with the precheck only the 3 no peer held.
    let per_look = if precheck { 3 } else { 7 };
    assert!(
        calls.load(Ordering::SeqCst) >= 2 * per_look,
        "the batch was examined twice"
    );
    let mut tc = t.target.client();
    assert_eq!(
        tc.cmd(&["GET", "s1"]),
        Reply::Bulk(Some(Bytes::from_static(b"theirs")))
    );
    assert_eq!(
        keys(&mut tc, 0),
        set_of(&["a1", "a2", "b1", "b2", "s1", "relay:offsets", "filtered"])
    );
}

fn watch_guard_alone_saves_a_key_the_own_stream_wrote_with(precheck: bool) {
    // The relay's own stream writes `s1` right after the WATCH (it was marked just before, so
    // from the next call on it is no longer a candidate); no peer ever holds it. Only the
    // WATCH stands between the write and the DEL.
    let t = three();
    let auth = Authority::Peers(vec![ep(&t.p0), ep(&t.p1)]);
    let target = ep(&t.target);
    let stream = Mutex::new(t.target.client());
    let written = AtomicBool::new(false);
    let check = |_db: u32, k: &[u8]| {
        if k == b"s1" {
            if written.swap(true, Ordering::SeqCst) {
                return false;
            }
            stream.lock().unwrap().cmd(&["SET", "s1", "fresh"]);
        }
        true
    };
    let mut plan = Plan::new(&target, &auth);
    plan.precheck = precheck;
    plan.keep = &own_or_filtered;
    plan.still_candidate = &check;
    let (r, _) = run(&plan, Scope::Db(0));
    assert_eq!(r.watch_aborts, 1, "{r:?}");
    assert_eq!((r.deleted, r.superseded), (2, 1), "{r:?}");
    assert_eq!(
        t.target.client().cmd(&["GET", "s1"]),
        Reply::Bulk(Some(Bytes::from_static(b"fresh")))
    );
}

#[test]
fn no_longer_a_candidate_is_kept() {
    let t = three();
    let auth = Authority::Peers(vec![ep(&t.p0), ep(&t.p1)]);
    let target = ep(&t.target);
    let claimed = |_db: u32, k: &[u8]| k != b"s2";
    let mut plan = Plan::new(&target, &auth);
    plan.keep = &own_or_filtered;
    plan.still_candidate = &claimed;
    let (r, _) = run(&plan, Scope::Db(0));
    assert_eq!((r.deleted, r.superseded, r.watch_aborts), (2, 1, 0));
    assert!(exists(&mut t.target.client(), 0, "s2"));
}

#[test]
fn a_key_written_on_every_look_is_isolated_and_deferred() {
    let target = RedisServer::start(&[]);
    let mut tc = target.client();
    put(&mut tc, 0, &["hot", "cold"]);
    let writer = Mutex::new(target.client());
    let always_written = |_db: u32, k: &[u8]| {
        if k == b"hot" {
            writer.lock().unwrap().cmd(&["SET", "hot", "again"]);
        }
        true
    };
    let auth = Authority::Exclusive;
    let tep = ep(&target);
    let mut plan = Plan::new(&tep, &auth);
    plan.still_candidate = &always_written;
    let (r, deferred) = run(&plan, Scope::Db(0));
    // 5 aborts of [hot, cold], split; [cold] goes; [hot] aborts 5 more times and is deferred.
    assert_eq!(r.watch_aborts, 10, "{r:?}");
    assert_eq!((r.deleted, r.deferred), (1, 1));
    assert_eq!(deferred_names(&deferred), set_of(&["hot"]));
    assert_eq!(keys(&mut tc, 0), set_of(&["hot"]));
}

#[test]
fn a_correct_hint_saves_round_trips() {
    let target = RedisServer::start(&[]);
    let p0 = RedisServer::start(&[]);
    let p1 = RedisServer::start(&[]);
    let auth = Authority::Peers(vec![ep(&p0), ep(&p1)]);
    let tep = ep(&target);
    let mut tc = target.client();

    // Every candidate lives on peer 1.
    put(&mut p1.client(), 0, &["h1", "h2", "h3"]);
    put(&mut tc, 0, &["h1", "h2", "h3"]);
    let plain = Plan::new(&tep, &auth);
    let (r, _) = run(&plain, Scope::Db(0));
    assert_eq!(
        (r.peer_round_trips, r.peer_exists, r.kept_on_peer),
        (2, 6, 3)
    );
    let on_1 = |_k: &[u8]| Some(1);
    let mut hinted = Plan::new(&tep, &auth);
    hinted.hint = Some(&on_1);
    let (r, _) = run(&hinted, Scope::Db(0));
    assert_eq!(
        (r.peer_round_trips, r.peer_exists, r.kept_on_peer),
        (1, 3, 3)
    );

    // One key per peer and one of our own (placed on our backend: no hint).
    tc.cmd(&["FLUSHALL"]);
    p1.client().cmd(&["FLUSHALL"]);
    put(&mut p0.client(), 0, &["a"]);
    put(&mut p1.client(), 0, &["b"]);
    put(&mut tc, 0, &["a", "b", "own"]);
    let placement = |k: &[u8]| match k {
        b"a" => Some(0),
        b"b" => Some(1),
        _ => None,
    };
    hinted.hint = Some(&placement);
    let (r, _) = run(&hinted, Scope::Db(0));
    // p0 {a, own}, p1 {b, own}: one round trip each, nothing left for a second round.
    assert_eq!((r.peer_round_trips, r.peer_exists), (2, 4), "{r:?}");
    assert_eq!((r.kept_on_peer, r.deleted), (2, 1));
    put(&mut tc, 0, &["own"]);
    let (r, _) = run(&plain, Scope::Db(0));
    // p0 {a, b, own}, then p1 {b, own}.
    assert_eq!((r.peer_round_trips, r.peer_exists), (2, 5), "{r:?}");
    assert_eq!((r.kept_on_peer, r.deleted), (2, 1));

    // With the precheck: p0 {a, own}, p1 {b, own}; then `own`, watched, of both at once.
    put(&mut tc, 0, &["own"]);
    hinted.precheck = true;
    let (r, _) = run(&hinted, Scope::Db(0));
    assert_eq!((r.peer_round_trips, r.peer_exists), (4, 6), "{r:?}");
    assert_eq!((r.kept_on_peer, r.deleted), (2, 1));
    hinted.precheck = false;

    // A wrong hint costs a second round but decides the same.
    put(&mut tc, 0, &["own"]);
    let wrong = |k: &[u8]| match k {
        b"a" => Some(1),
        b"b" => Some(0),
        _ => Some(0),
    };
    hinted.hint = Some(&wrong);
    let (r, _) = run(&hinted, Scope::Db(0));
    assert_eq!((r.kept_on_peer, r.deleted), (2, 1), "{r:?}");
    assert_eq!(r.peer_round_trips, 4, "{r:?}");
}

#[test]
fn a_refusing_target_is_an_error_naming_it_and_the_command() {
    let target = RedisServer::start(&["user relay on >pw ~* +@all -del"]);
    let mut tep = ep(&target);
    tep.username = Some("relay".into());
    tep.password = Some("pw".into());
    {
        let mut c = target.client();
        c.cmd(&["SET", "s", "v"]);
    }
    let auth = Authority::Exclusive;
    let plan = Plan::new(&tep, &auth);
    let e = sweep(&plan, Scope::Db(0), &mut |_, _| {}).expect_err("DEL is not allowed");
    assert!(matches!(e, DeletionError::Refused { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&target.addr()), "{text}");
    assert!(text.contains("DEL") && text.contains("NOPERM"), "{text}");
    assert!(!text.contains("pw"), "{text}");
}

#[test]
fn two_source_dbs_into_one_and_a_peer_with_a_password() {
    let target = RedisServer::start(&[]);
    let p0 = RedisServer::start(&["requirepass s3cret"]);
    let mut pc = p0.client();
    pc.cmd(&["AUTH", "s3cret"]);
    put(&mut pc, 3, &["from3"]);
    put(&mut pc, 4, &["from4"]);
    let mut tc = target.client();
    put(&mut tc, 0, &["from3", "from4", "stale"]);
    let mut peer = ep(&p0);
    peer.password = Some("s3cret".into());
    let auth = Authority::Peers(vec![peer]);
    let tep = ep(&target);
    // Source dbs 3 and 4 both land in target db 0.
    let merged = |db: u32| if db == 0 { vec![3, 4] } else { vec![] };
    let mut plan = Plan::new(&tep, &auth);
    plan.peer_dbs = &merged;
    let (r, deferred) = run(&plan, Scope::Db(0));
    assert!(deferred.is_empty() && r.peers_down.is_empty(), "{r:?}");
    assert_eq!((r.kept_on_peer, r.deleted, r.peer_round_trips), (2, 1, 1));
    assert_eq!(r.peer_exists, 6);
    assert_eq!(keys(&mut tc, 0), set_of(&["from3", "from4"]));

    // A wrong password proves nothing: deferred, and the error does not show it.
    let mut wrong = ep(&p0);
    wrong.password = Some("nope".into());
    let auth = Authority::Peers(vec![wrong]);
    plan.authority = &auth;
    put(&mut tc, 0, &["stale"]);
    let (r, deferred) = run(&plan, Scope::Db(0));
    assert_eq!((r.deferred, r.deleted, r.kept_on_peer), (3, 0, 0), "{r:?}");
    assert_eq!(deferred.len(), 3);
    assert_eq!(r.peers_down, vec![p0.addr()]);
}

#[test]
fn retry_applies_keep_and_still_candidate_again() {
    let target = RedisServer::start(&[]);
    let mut tc = target.client();
    put(&mut tc, 0, &["k1", "k2", "k3"]);
    put(&mut tc, 1, &["k1"]);
    let auth = Authority::Exclusive;
    let tep = ep(&target);
    let snapshot = |db: u32, k: &[u8]| db == 0 && k == b"k1";
    let stream = |db: u32, k: &[u8]| !(db == 0 && k == b"k2");
    let mut plan = Plan::new(&tep, &auth);
    plan.keep = &snapshot;
    plan.still_candidate = &stream;
    plan.batch = 1;
    let mut list = vec![
        (0, Bytes::from_static(b"k1")),
        (0, Bytes::from_static(b"k2")),
        (1, Bytes::from_static(b"k1")),
        (0, Bytes::from_static(b"k3")),
    ]
    .into_iter();
    let r = retry(&plan, &mut list, &mut |_, _| panic!("nothing to defer")).expect("retry");
    assert_eq!(
        (r.scanned, r.kept_by_rule, r.superseded, r.deleted),
        (4, 1, 1, 2),
        "{r:?}"
    );
    assert_eq!(keys(&mut tc, 0), set_of(&["k1", "k2"]));
    assert!(keys(&mut tc, 1).is_empty());
}

#[test]
fn keys_on_peers_kept_stale_deleted_own_untouched() {
    keys_on_peers_kept_stale_deleted_own_untouched_with(false);
}

#[test]
fn keys_on_peers_kept_stale_deleted_own_untouched_precheck() {
    keys_on_peers_kept_stale_deleted_own_untouched_with(true);
}

#[test]
fn a_peer_down_defers_then_retry_settles() {
    a_peer_down_defers_then_retry_settles_with(false);
}

#[test]
fn a_peer_down_defers_then_retry_settles_precheck() {
    a_peer_down_defers_then_retry_settles_with(true);
}

#[test]
fn watch_guard_redoes_a_batch_written_meanwhile() {
    watch_guard_redoes_a_batch_written_meanwhile_with(false);
}

#[test]
fn watch_guard_redoes_a_batch_written_meanwhile_precheck() {
    watch_guard_redoes_a_batch_written_meanwhile_with(true);
}

#[test]
fn watch_guard_alone_saves_a_key_the_own_stream_wrote() {
    watch_guard_alone_saves_a_key_the_own_stream_wrote_with(false);
}

#[test]
fn watch_guard_alone_saves_a_key_the_own_stream_wrote_precheck() {
    watch_guard_alone_saves_a_key_the_own_stream_wrote_with(true);
}
