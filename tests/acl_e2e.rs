//! Least privilege: the `ACL SETUSER` lines of docs/security.md are enough for `check`, a
//! full sync, the stream, a resume after SIGKILL and `verify`; one permission less on either
//! user is a failed `check` naming it, and a source user without PSYNC stops `sync` at once
//! with a clear error instead of retrying.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{assert_union_equal, check_line, relay_json, wait_until, Client, RedisServer, Relay};

const SOURCE_PW: &str = "src-pw-1";
const TARGET_PW: &str = "tgt-pw-2";

/// The documented `ACL SETUSER <user> ...` line of docs/security.md.
fn documented_rule(user: &str) -> String {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md"))
            .expect("docs/security.md");
    let head = format!("ACL SETUSER {user} ");
    page.lines()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| panic!("no `{head}` line in docs/security.md"))
        .to_string()
}

/// Create `user` on `server` with the documented rule (password `pw`) plus `extra` rules.
fn create_user(server: &RedisServer, user: &str, pw: &str, extra: &[&str]) {
    let rule = documented_rule(user).replace(">PASSWORD", &format!(">{pw}"));
    let mut args: Vec<&str> = rule.split_whitespace().collect();
    args.extend_from_slice(extra);
    server.client().cmd(&args);
}

fn url(server: &RedisServer, user: &str) -> String {
    format!("redis://{user}@{}", server.addr())
}

/// A password file of mode 0600 in `dir`.
fn password_file(dir: &Path, name: &str, pw: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// The options naming both users, their password files and the state directory.
fn relay_args(src: &RedisServer, tgt: &RedisServer, dir: &Path) -> Vec<String> {
    vec![
        "--source".into(),
        url(src, "relay-source"),
        "--source-password-file".into(),
        password_file(dir, "source.pw", SOURCE_PW),
        "--target".into(),
        url(tgt, "relay-target"),
        "--target-password-file".into(),
        password_file(dir, "target.pw", TARGET_PW),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
    ]
}

/// Keys of every type, in two databases, with a TTL.
fn load(c: &mut Client, tag: &str) {
    for i in 0..200 {
        c.cmd(&["SET", &format!("{tag}:s:{i}"), &format!("v{i}")]);
    }
    c.cmd(&["HSET", &format!("{tag}:h"), "f", "v"]);
    c.cmd(&["RPUSH", &format!("{tag}:l"), "a", "b"]);
    c.cmd(&["SADD", &format!("{tag}:set"), "x"]);
    c.cmd(&["ZADD", &format!("{tag}:z"), "1", "m"]);
    c.cmd(&["XADD", &format!("{tag}:x"), "*", "f", "v"]);
    c.cmd(&["SET", &format!("{tag}:ttl"), "v", "EX", "1000"]);
    c.cmd(&["SELECT", "1"]);
    c.cmd(&["SET", &format!("{tag}:db1"), "v"]);
    c.cmd(&["SELECT", "0"]);
}

fn args_ref(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn documented_rules_are_enough_for_check_sync_resume_and_verify() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    create_user(&src, "relay-source", SOURCE_PW, &[]);
    create_user(&tgt, "relay-target", TARGET_PW, &[]);
    let dir = tempfile::tempdir().unwrap();
    let args = relay_args(&src, &tgt, dir.path());
    let mut c = src.client();
    load(&mut c, "snap");

    let (code, report) = relay_json("check", &args_ref(&args));
    assert_eq!(
        code, 0,
        "check passes with the documented rules: {report:#}"
    );
    for subject in ["source", "target"] {
        assert_eq!(
            check_line(&report, "acl", subject)["status"],
            "pass",
            "{report:#}"
        );
    }
    assert_eq!(
        check_line(&report, "psync", "source")["status"],
        "pass",
        "{report:#}"
    );

    let mut relay = Relay::start_synced(&args, dir.path(), &src.addr());
    load(&mut c, "stream");
    c.cmd(&["DEL", "snap:s:1"]);
    c.cmd(&["EXPIRE", "snap:s:2", "500"]);
    c.cmd(&["INCR", "counter"]);
    let mut t = tgt.client();
    assert!(
        wait_until(Duration::from_secs(30), || {
            t.cmd(&["EXISTS", "stream:ttl"]).as_int() == Some(1)
        }),
        "the stream was applied:\n{}",
        relay.log_text()
    );
    relay.kill();
    let mut log = relay.log_text();
    load(&mut c, "after");
    c.cmd(&["UNLINK", "snap:s:3"]);

    let relay = Relay::start_sync(&args, dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || {
            t.cmd(&["EXISTS", "after:ttl"]).as_int() == Some(1)
                && t.cmd(&["EXISTS", "snap:s:3"]).as_int() == Some(0)
        }),
        "resumed after SIGKILL:\n{}",
        relay.log_text()
    );
    log.push_str(&relay.log_text());
    assert!(
        log.contains("partial resync") || log.contains("CONTINUE") || log.contains("resum"),
        "the restart resumed (no full sync needed): {log}"
    );
    let (code, v) = relay_json("verify", &args_ref(&args));
    assert_eq!(
        code, 0,
        "verify passes as the least-privilege users: {v:#}\n{log}"
    );
    assert_union_equal(&[src.url()], &tgt.url(), &log);
    assert!(
        !log.contains("NOPERM"),
        "no permission was missing at run time: {log}"
    );
}

#[test]
fn check_names_the_missing_permission_of_each_user() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    create_user(&src, "relay-source", SOURCE_PW, &["-psync"]);
    create_user(&tgt, "relay-target", TARGET_PW, &["-restore"]);
    src.client().cmd(&["SET", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let args = relay_args(&src, &tgt, dir.path());
    let (code, report) = relay_json("check", &args_ref(&args));
    assert_eq!(code, 1, "check fails: {report:#}");

    let line = check_line(&report, "psync", "source");
    assert_eq!(line["status"], "fail", "{report:#}");
    let msg = line["message"].as_str().unwrap();
    assert!(
        msg.contains("relay-source") && msg.contains("PSYNC"),
        "{msg}"
    );
    assert!(msg.contains(&src.addr()), "names the server: {msg}");
    let fix = line["fix"].as_str().unwrap();
    assert!(fix.contains("ACL SETUSER relay-source +psync"), "{fix}");

    let line = check_line(&report, "acl", "target");
    assert_eq!(line["status"], "fail", "{report:#}");
    let msg = line["message"].as_str().unwrap();
    assert!(
        msg.contains("relay-target") && msg.contains("'restore'") && msg.contains("NOPERM"),
        "{msg}"
    );
    let fix = line["fix"].as_str().unwrap();
    assert!(
        fix.starts_with("ACL SETUSER relay-target +restore"),
        "{fix}"
    );
    // Only the missing one is reported.
    let failed: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 2, "{report:#}");

    // A key pattern that misses the relay's keys is named too.
    create_user(
        &tgt,
        "relay-target",
        TARGET_PW,
        &["+restore", "resetkeys", "~app:*"],
    );
    let (code, report) = relay_json("check", &args_ref(&args));
    assert_eq!(code, 1, "{report:#}");
    let line = check_line(&report, "acl", "target");
    assert!(
        line["fix"]
            .as_str()
            .unwrap()
            .starts_with("ACL SETUSER relay-target ~*"),
        "{report:#}"
    );
}

#[test]
fn sync_without_psync_permission_stops_with_a_clear_error() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    create_user(&src, "relay-source", SOURCE_PW, &["-psync"]);
    create_user(&tgt, "relay-target", TARGET_PW, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = relay_args(&src, &tgt, dir.path());
    args.push("--skip-check".into());
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_redis-relay"))
        .arg("sync")
        .args(&args)
        .env("RUST_LOG", "info")
        .env_remove("REDIS_RELAY_TARGET")
        .stdin(Stdio::null())
        .output()
        .expect("run redis-relay");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exits with an error: {log}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stops at once, no retry loop: {log}"
    );
    assert!(
        log.contains("NOPERM") && log.contains("'psync'") && log.contains("+psync"),
        "names the command and the fix: {log}"
    );
    assert!(log.contains("ERROR"), "logged at error: {log}");
    assert_eq!(
        log.matches("state=handshake").count(),
        1,
        "one attempt, not a retry loop: {log}"
    );
}

/// A peer whose user may not run EXISTS cannot prove a key is not its own: a warning (the
/// deletions wait) naming the user, the command and the fix; the peer's password comes from
/// `--peer-password-file`.
#[test]
fn a_peer_without_exists_is_a_warning_naming_it() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let peer = RedisServer::start(&[]);
    create_user(&peer, "relay-source", SOURCE_PW, &["-exists"]);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--source".to_string(),
        src.url(),
        "--target".into(),
        tgt.url(),
        "--peer".into(),
        url(&peer, "relay-source"),
        "--peer-password-file".into(),
        password_file(dir.path(), "peer.pw", SOURCE_PW),
        "--state-dir".into(),
        dir.path().join("state").display().to_string(),
    ];
    let (code, report) = relay_json("check", &args_ref(&args));
    assert_eq!(code, 0, "a warning, not a failure: {report:#}");
    assert_eq!(
        check_line(&report, "reachable", "peer")["status"],
        "pass",
        "{report:#}"
    );
    let line = check_line(&report, "acl", "peer");
    assert_eq!(line["status"], "warn", "{report:#}");
    assert!(
        line["message"].as_str().unwrap().contains("'exists'"),
        "{report:#}"
    );
    assert!(
        line["fix"]
            .as_str()
            .unwrap()
            .starts_with("ACL SETUSER relay-source +exists"),
        "{report:#}"
    );
}
