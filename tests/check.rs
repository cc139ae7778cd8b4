//! `redis-relay check` (and the prechecks at the start of `sync`) against real servers
//! misconfigured on purpose: each check fails (or warns) and prints its fix.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;
use support::{free_port, relay_cli, relay_json, Nutcracker, RedisServer};

/// `check --json` with `args`: (exit code, report).
fn check(args: &[&str]) -> (i32, J) {
    relay_json("check", args)
}

use support::check_line as line;

fn fix(l: &J) -> &str {
    l["fix"].as_str().unwrap_or_else(|| panic!("no fix in {l}"))
}

#[test]
fn healthy_setup_passes_and_text_output_has_one_line_per_check() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    src.client().cmd(&["SET", "a", "1"]);
    let (code, r) = check(&["--source", &src.url(), "--target", &tgt.url()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["failed"], 0);
    for c in ["reachable", "psync", "backlog"] {
        assert_eq!(line(&r, c, &src.addr())["status"], "pass", "{r:#}");
    }
    for c in ["reachable", "version", "eviction", "memory", "empty"] {
        assert_eq!(
            line(&r, c, &format!("target {}", tgt.addr()))["status"],
            "pass",
            "{r:#}"
        );
    }
    let out = relay_cli(&["check", "--source", &src.url(), "--target", &tgt.url()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("PASS")).count() >= 8,
        "{text}"
    );
    assert!(text.contains("precheck: "), "{text}");
}

#[test]
fn wrong_or_missing_password_fails_with_the_fix() {
    let src = RedisServer::start(&["requirepass s3cret"]);
    let tgt = RedisServer::start(&["requirepass t4rget"]);
    let wrong = format!("redis://:nope@{}", src.addr());
    let (code, r) = check(&[
        "--source",
        &wrong,
        "--target",
        &format!("redis://:t4rget@{}", tgt.addr()),
    ]);
    assert_eq!(code, 1);
    let l = line(&r, "auth", &src.addr());
    assert_eq!(l["status"], "fail");
    assert!(l["message"].as_str().unwrap().contains("WRONGPASS"), "{l}");
    assert!(fix(l).contains("password"), "{l}");
    // The password never shows.
    assert!(!r.to_string().contains("nope") && !r.to_string().contains("t4rget"));
    // No password at all on the target.
    let (code, r) = check(&[
        "--source",
        &format!("redis://:s3cret@{}", src.addr()),
        "--target",
        &tgt.url(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        line(&r, "reachable", &src.addr())["status"],
        "pass",
        "{r:#}"
    );
    let l = line(&r, "auth", &tgt.addr());
    assert_eq!(l["status"], "fail");
    assert!(fix(l).contains("redis://:PASSWORD@"), "{l}");
}

#[test]
fn refused_connection_hints_at_bind() {
    let tgt = RedisServer::start(&[]);
    let port = free_port();
    let (code, r) = check(&[
        "--source",
        &format!("redis://127.0.0.1:{port}"),
        "--target",
        &tgt.url(),
    ]);
    assert_eq!(code, 1);
    let l = line(&r, "reachable", &format!("127.0.0.1:{port}"));
    assert_eq!(l["status"], "fail");
    assert!(l["message"].as_str().unwrap().contains("refused"), "{l}");
    assert!(fix(l).contains("bind"), "{l}");
    // The target is still checked.
    assert_eq!(line(&r, "reachable", &tgt.addr())["status"], "pass");
}

/// A non-loopback address of this host (the source address of a route to the outside).
fn host_address() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.200:9").or_else(|_| s.connect("8.8.8.8:53")).expect(
        "this test needs a non-loopback IPv4 address (protected mode only refuses remote clients)",
    );
    let ip = s.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no non-loopback address: {ip}"
    );
    ip.to_string()
}

#[test]
fn protected_mode_refusal_is_explained() {
    let ip = host_address();
    let src = RedisServer::start(&[&format!("bind 127.0.0.1 {ip}"), "protected-mode yes"]);
    let tgt = RedisServer::start(&[]);
    let (code, r) = check(&[
        "--source",
        &format!("redis://{ip}:{}", src.port),
        "--target",
        &tgt.url(),
    ]);
    assert_eq!(code, 1);
    let l = line(&r, "reachable", &format!("{ip}:{}", src.port));
    assert_eq!(l["status"], "fail", "{r:#}");
    assert!(
        l["message"].as_str().unwrap().contains("protected mode"),
        "{l}"
    );
    assert!(
        fix(l).contains("requirepass") && fix(l).contains("protected-mode"),
        "{l}"
    );
}

#[test]
fn evicting_target_fails_unless_allowed() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&["maxmemory 100mb", "maxmemory-policy allkeys-lru"]);
    let (code, r) = check(&["--source", &src.url(), "--target", &tgt.url()]);
    assert_eq!(code, 1);
    let l = line(&r, "eviction", &tgt.addr());
    assert_eq!(l["status"], "fail");
    assert!(l["message"].as_str().unwrap().contains("allkeys-lru"));
    assert!(fix(l).contains("maxmemory-policy noeviction") && fix(l).contains("--allow-eviction"));
    let (code, r) = check(&[
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--allow-eviction",
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(line(&r, "eviction", &tgt.addr())["status"], "warn");
}

#[test]
fn small_target_memory_fails() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&["maxmemory 3mb"]);
    let mut c = src.client();
    let v = "x".repeat(10_000);
    let cmds: Vec<Vec<String>> = (0..1000)
        .map(|i| vec!["SET".into(), format!("k{i}"), v.clone()])
        .collect();
    c.pipeline(&cmds);
    let (code, r) = check(&["--source", &src.url(), "--target", &tgt.url()]);
    assert_eq!(code, 1);
    let l = line(&r, "memory", &tgt.addr());
    assert_eq!(l["status"], "fail", "{r:#}");
    assert!(fix(l).contains("maxmemory"), "{l}");
}

#[test]
fn non_empty_target_abort_ignore_and_resume() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let mut t = tgt.client();
    t.cmd(&["SELECT", "2"]);
    t.cmd(&["SET", "leftover", "1"]);
    // The relay's own keys do not count.
    t.cmd(&["SELECT", "0"]);
    t.cmd(&["SET", "redis-relay:marker", "1"]);
    let state = tempfile::tempdir().unwrap();
    let sd = state.path().display().to_string();
    let base = [
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--state-dir",
        &sd,
    ];
    let (code, r) = check(&base);
    assert_eq!(code, 1);
    let l = line(&r, "empty", &tgt.addr());
    assert_eq!(l["status"], "fail");
    assert!(
        l["message"].as_str().unwrap().contains("db2: 1 keys"),
        "{l}"
    );
    assert!(!l["message"].as_str().unwrap().contains("db0"), "{l}");
    assert!(fix(l).contains("--if-target-not-empty ignore"), "{l}");

    let mut ignore = base.to_vec();
    ignore.extend(["--if-target-not-empty", "ignore"]);
    let (code, r) = check(&ignore);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(line(&r, "empty", &tgt.addr())["status"], "warn");

    // Only db 0 is copied: db 2 does not matter.
    let mut db0 = base.to_vec();
    db0.extend(["--db", "0"]);
    let (code, r) = check(&db0);
    assert_eq!(code, 0, "{r:#}");

    // A relay resuming from its own checkpoint expects the target to hold its keys.
    let cp = redis_relay::pipeline::checkpoint::Checkpoint {
        source: src.addr(),
        replid: "0".repeat(40),
        offset: 1,
        db: 0,
        writers: 1,
        target_marker: None,
    };
    redis_relay::pipeline::checkpoint::save(state.path(), &cp).unwrap();
    let (code, r) = check(&base);
    assert_eq!(code, 0, "{r:#}");
    let l = line(&r, "empty", &tgt.addr());
    assert_eq!(l["status"], "pass");
    assert!(l["message"].as_str().unwrap().contains("resumes"), "{l}");
}

#[test]
fn sync_runs_the_prechecks_unless_skipped() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&["maxmemory-policy allkeys-lru"]);
    let state = tempfile::tempdir().unwrap();
    let sd = state.path().display().to_string();
    let out = relay_cli(&[
        "sync",
        "-q",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--state-dir",
        &sd,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAIL") && err.contains("maxmemory-policy noeviction"),
        "{err}"
    );
    assert!(err.contains("--skip-check"), "{err}");
    // With --skip-check it starts (and runs until stopped).
    let mut child = Command::new(env!("CARGO_BIN_EXE_redis-relay"))
        .args([
            "sync",
            "-q",
            "--skip-check",
            "--source",
            &src.url(),
            "--target",
            &tgt.url(),
            "--state-dir",
            &sd,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "sync --skip-check exited early"
    );
    support::stop_child(&mut child);
}

#[test]
fn tiny_backlog_under_write_load_warns() {
    let src = RedisServer::start(&["repl-backlog-size 16kb"]);
    // A real replica, so that the master has a backlog and counts its offset.
    let _replica = RedisServer::start(&[&format!("replicaof 127.0.0.1 {}", src.port)]);
    let tgt = RedisServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut c = src.client();
        std::thread::spawn(move || {
            let v = "v".repeat(1000);
            let cmds: Vec<Vec<String>> = (0..100)
                .map(|i| vec!["SET".into(), format!("k{i}"), v.clone()])
                .collect();
            while !stop.load(Ordering::Relaxed) {
                c.pipeline(&cmds);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (code, r) = check(&["--source", &src.url(), "--target", &tgt.url()]);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(code, 0, "a warning is not a failure: {r:#}");
    let l = line(&r, "backlog", &src.addr());
    assert_eq!(l["status"], "warn", "{r:#}");
    assert!(l["message"].as_str().unwrap().contains("16.0 KiB"), "{l}");
    assert!(fix(l).contains("CONFIG SET repl-backlog-size"), "{l}");
}

#[test]
fn twemproxy_backend_unreachable_fails() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let proxy = Nutcracker::start(&[a.addr(), b.addr()]);
    let cfg = proxy.config_path.display().to_string();
    let (code, r) = check(&["--twemproxy", &cfg, "--target", &tgt.url()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(line(&r, "config", "twemproxy")["status"], "pass");
    let baddr = b.addr();
    drop(b);
    let (code, r) = check(&["--twemproxy", &cfg, "--target", &tgt.url()]);
    assert_eq!(code, 1);
    let l = line(&r, "reachable", &baddr);
    assert_eq!(l["status"], "fail");
    assert!(l["subject"].as_str().unwrap().contains("alpha"), "{l}");
    assert!(fix(l).contains("bind"), "{l}");
    assert_eq!(line(&r, "reachable", &a.addr())["status"], "pass");
    // A broken config file names the problem.
    let bad = proxy.dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "alpha:\n  listen: 127.0.0.1:1\n  redis: true\n  servers:\n   - nonsense\n",
    )
    .unwrap();
    let (code, r) = check(&[
        "--twemproxy",
        &bad.display().to_string(),
        "--target",
        &tgt.url(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(line(&r, "config", "twemproxy")["status"], "fail", "{r:#}");
}
