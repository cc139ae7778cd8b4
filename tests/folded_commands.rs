//! End to end on real servers: runs of the stream's plain `SET`s reach the target as `MSET`s
//! and runs of pushes to one list as variadic pushes (`pipeline::fold`), and the target still
//! ends equal to the master, with `redis_relay_commands_applied_total` counting the master's
//! commands, across a SIGKILL of the relay in the middle of the runs.
mod support;

use std::time::Duration;

use redis_relay::resp::Reply;
use support::{wait_until, Client, RedisServer, Relay};

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// `cmdstat_<name>` calls on `c`.
fn calls(c: &mut Client, name: &str) -> u64 {
    c.info_field("commandstats", &format!("cmdstat_{name}"))
        .and_then(|v| v.strip_prefix("calls=")?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Pipelined in blocks, so that each block reaches the stream as consecutive commands:
/// plain SETs, LPUSHes and RPUSHes to two lists (one and several elements each), INCRs and a
/// SET with an option between the runs.
fn write_runs(c: &mut Client, round: u64) -> u64 {
    let mut sent = 0;
    for block in 0..20u64 {
        let mut cmds: Vec<Vec<String>> = Vec::new();
        for i in 0..100u64 {
            let n = round * 10_000 + block * 100 + i;
            cmds.push(vec![s("SET"), format!("str:{}", n % 700), s(n)]);
        }
        for i in 0..100u64 {
            let n = round * 10_000 + block * 100 + i;
            cmds.push(vec![s("LPUSH"), s("queue:l"), s(n)]);
        }
        for i in 0..100u64 {
            let n = round * 10_000 + block * 100 + i;
            if i % 10 == 0 {
                cmds.push(vec![s("RPUSH"), s("queue:r"), s(n), format!("{n}b")]);
            } else {
                cmds.push(vec![s("RPUSH"), s("queue:r"), s(n)]);
            }
        }
        cmds.push(vec![s("INCR"), s("counter")]);
        cmds.push(vec![s("SET"), s("str:ex"), s(block), s("EX"), s("1000")]);
        sent += cmds.len() as u64;
        let replies = c.pipeline(&cmds);
        assert!(replies.iter().all(|r| !matches!(r, Reply::Error(_))));
    }
    sent
}

fn dump(c: &mut Client) -> Vec<(String, Reply)> {
    let mut out = Vec::new();
    let mut keys: Vec<String> = match c.cmd(&["KEYS", "*"]) {
        Reply::Array(Some(items)) => items.iter().filter_map(|r| r.as_text()).collect(),
        other => panic!("KEYS: {other:?}"),
    };
    keys.retain(|k| !k.starts_with("redis-relay:"));
    keys.sort();
    for k in keys {
        let v = match c.cmd(&["TYPE", &k]).as_text().as_deref() {
            Some("list") => c.cmd(&["LRANGE", &k, "0", "-1"]),
            _ => c.cmd(&["GET", &k]),
        };
        out.push((k, v));
    }
    out
}

#[test]
fn runs_of_sets_and_pushes_arrive_folded_and_equal() {
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let args = vec![
        s("--source"),
        master.url(),
        s("--target"),
        target.url(),
        s("--state-dir"),
        state.path().display().to_string(),
    ];
    let mut m = master.client();
    m.cmd(&["SET", "before", "snapshot"]);
    let mut relay = Relay::start_synced(&args, state.path(), &master.addr());
    let mut t = target.client();
    let (mset0, lpush0) = (calls(&mut t, "mset"), calls(&mut t, "lpush"));

    let mut sent = write_runs(&mut m, 0);
    // A crash while the runs are applied: the restarted relay resumes from its records.
    relay.kill();
    sent += write_runs(&mut m, 1);
    let relay = Relay::start_sync(&args, state.path());
    sent += write_runs(&mut m, 2);
    let applied = || relay.metric("redis_relay_commands_applied_total", &master.addr());
    let equal = wait_until(Duration::from_secs(60), || {
        dump(&mut master.client()) == dump(&mut target.client())
    });
    assert!(
        equal,
        "target differs from the master:\n{}",
        relay.log_text()
    );

    // The rounds after the restart were all applied by the second process: its count is the
    // master's commands of those rounds, at least (plus what it replayed of the first).
    let after_restart = 2 * (sent / 3);
    assert!(
        wait_until(Duration::from_secs(10), || applied()
            .is_some_and(|a| a as u64 >= after_restart)),
        "commands applied {:?}, want at least {after_restart} (one per master command, not per MSET)",
        applied()
    );
    // Folded: far fewer LPUSH calls than the master's 6,000, and MSETs for the SETs.
    let lpushes = calls(&mut t, "lpush") - lpush0;
    let msets = calls(&mut t, "mset") - mset0;
    eprintln!("target: {lpushes} LPUSH calls for 6,000 pushes, {msets} MSETs for 6,000 SETs");
    assert!(lpushes < 3_000, "{lpushes} LPUSH calls for 6,000 pushes");
    assert!(msets > 0, "no MSET on the target");
    assert_eq!(m.cmd(&["GET", "counter"]), t.cmd(&["GET", "counter"]));
}
