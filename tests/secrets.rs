//! Secrets: a password planted on the source (`requirepass`) and on the target (an ACL user),
//! given through a password file and an environment variable, never shows up anywhere the
//! relay writes: `check --json`, a `sync` logging at trace through a full sync and the
//! stream, `status --json`, `/metrics`, `/status`, `verify --json`, the process's command
//! line, and the errors of a wrong password (which must not show the wrong password either).

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{free_port, http_get, stop_child, wait_until, Client, RedisServer};

const PLANTED: &str = "pl4nted-S3cret-xyz";
const WRONG: &str = "wr0ng-Pl4nted-guess";

fn relay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_redis-relay"));
    c.env_remove("REDIS_RELAY_TARGET")
        .env_remove("REDIS_RELAY_SOURCE_PASSWORD")
        .env_remove("REDIS_RELAY_TARGET_PASSWORD")
        .env("RUST_LOG", "trace");
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics (without printing the text around it, which is the point) if `what` holds `secret`.
fn assert_clean(what: &str, text: &str, secret: &str) {
    let hits = text.matches(secret).count();
    assert_eq!(hits, 0, "{what}: {hits} occurrence(s) of the password");
}

fn password_file(dir: &Path, name: &str, pw: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

struct Setup {
    src: RedisServer,
    tgt: RedisServer,
    dir: tempfile::TempDir,
    config: String,
}

/// Source with `requirepass`, target with an ACL user, both with [`PLANTED`]; a config file
/// naming the source's password file; the target's password comes from the environment.
fn setup() -> Setup {
    let src = RedisServer::start(&[&format!("requirepass {PLANTED}")]);
    let tgt = RedisServer::start(&[]);
    tgt.client().cmd(&[
        "ACL",
        "SETUSER",
        "relay-target",
        "on",
        &format!(">{PLANTED}"),
        "~*",
        "&*",
        "+@all",
    ]);
    let mut c = source_client(&src);
    for i in 0..100 {
        c.cmd(&["SET", &format!("k{i}"), "v"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "source.pw", PLANTED);
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "source = [\"redis://{}\"]\nsource-password-file = \"{pw}\"\ntarget = \"redis://relay-target@{}\"\nstate-dir = \"{}\"\n",
            src.addr(),
            tgt.addr(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    Setup {
        src,
        tgt,
        config: config.display().to_string(),
        dir,
    }
}

fn source_client(src: &RedisServer) -> Client {
    let mut c = src.client();
    c.cmd(&["AUTH", PLANTED]);
    c
}

#[test]
fn a_planted_password_appears_in_no_output() {
    let s = setup();
    let check = relay()
        .args(["check", "--json", "--config", &s.config])
        .env("REDIS_RELAY_TARGET_PASSWORD", PLANTED)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "check passes: {}",
        text(&check).len()
    );
    assert_clean("check --json", &text(&check), PLANTED);

    let port = free_port();
    let log_path = s.dir.path().join("sync.log");
    let mut child = relay()
        .args(["sync", "--config", &s.config])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("REDIS_RELAY_TARGET_PASSWORD", PLANTED)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(s.dir.path().join("sync.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert_clean(
        "/proc/PID/cmdline",
        &String::from_utf8_lossy(&cmdline),
        PLANTED,
    );
    let mut c = source_client(&s.src);
    let mut t = s.tgt.client();
    let copied = wait_until(Duration::from_secs(30), || {
        t.cmd(&["EXISTS", "k99"]).as_int() == Some(1)
    });
    c.cmd(&["SET", "streamed", "1"]);
    let streamed = wait_until(Duration::from_secs(30), || {
        t.cmd(&["EXISTS", "streamed"]).as_int() == Some(1)
    });
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    let status = http_get(port, "/status").unwrap_or_default();
    let status_json = relay()
        .args(["status", "--json", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let verify = relay()
        .args(["verify", "--json", "--config", &s.config])
        .env("REDIS_RELAY_TARGET_PASSWORD", PLANTED)
        .output()
        .unwrap();
    stop_child(&mut child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let out = std::fs::read_to_string(s.dir.path().join("sync.out")).unwrap();
    assert!(
        copied && streamed,
        "synced and streamed ({} log bytes)",
        log.len()
    );
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is verbose"
    );
    assert!(metrics.contains("redis_relay_"), "metrics served");
    assert!(status.contains(&s.src.addr()), "status served");
    // 1: not ready yet (the relay may still be catching up); the JSON is printed either way.
    assert!(
        matches!(status_json.status.code(), Some(0 | 1))
            && String::from_utf8_lossy(&status_json.stdout).contains("\"ready\""),
        "status --json runs"
    );
    assert_eq!(verify.status.code(), Some(0), "verify passes");
    for (what, t) in [
        ("sync log (trace)", log.as_str()),
        ("sync stdout", out.as_str()),
        ("/metrics", metrics.as_str()),
        ("/status", status.as_str()),
        ("status --json", &text(&status_json)),
        ("verify --json", &text(&verify)),
    ] {
        assert_clean(what, t, PLANTED);
    }
}

#[test]
fn wrong_passwords_fail_clearly_without_showing_either_password() {
    let s = setup();
    // The right source password in the file, a wrong target password in the environment.
    let check = relay()
        .args(["check", "--json", "--config", &s.config])
        .env("REDIS_RELAY_TARGET_PASSWORD", WRONG)
        .output()
        .unwrap();
    let all = text(&check);
    assert_eq!(check.status.code(), Some(1), "check fails");
    assert!(
        all.contains("authentication failed"),
        "the auth line says why"
    );
    assert_clean("check --json (wrong target password)", &all, WRONG);
    assert_clean("check --json (wrong target password)", &all, PLANTED);

    // A wrong source password (the environment over the file) stops sync at once.
    let sync = relay()
        .args(["sync", "--skip-check", "--config", &s.config])
        .env("REDIS_RELAY_SOURCE_PASSWORD", WRONG)
        .env("REDIS_RELAY_TARGET_PASSWORD", PLANTED)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&sync);
    assert_eq!(sync.status.code(), Some(1), "sync stops");
    assert!(
        all.contains("WRONGPASS") || all.contains("invalid password"),
        "the error says the password is wrong"
    );
    assert_clean("sync (wrong source password)", &all, WRONG);
    assert_clean("sync (wrong source password)", &all, PLANTED);

    // A password in a URL still works, with a warning that does not repeat it.
    let url = format!("redis://:{PLANTED}@{}", s.src.addr());
    let check = relay()
        .args(["check", "--source", &url, "--target"])
        .arg(format!("redis://relay-target@{}", s.tgt.addr()))
        .args([
            "--state-dir",
            &s.dir.path().join("state2").display().to_string(),
        ])
        .env("REDIS_RELAY_TARGET_PASSWORD", PLANTED)
        .output()
        .unwrap();
    let all = text(&check);
    assert_eq!(check.status.code(), Some(0), "check passes");
    assert!(
        all.contains("--source-password-file"),
        "the warning names the option"
    );
    assert_clean("check with a URL password", &all, PLANTED);
}

/// A Twemproxy pool's `redis_auth` is the sources' password by default; `--source-user` with
/// `REDIS_RELAY_SOURCE_PASSWORD` logs in as an ACL user instead. Neither password is shown.
#[test]
fn twemproxy_redis_auth_or_the_source_user() {
    const POOL_AUTH: &str = "p00l-Auth-planted";
    let src = RedisServer::start(&[&format!("requirepass {POOL_AUTH}")]);
    let tgt = RedisServer::start(&[]);
    let mut c = src.client();
    c.cmd(&["AUTH", POOL_AUTH]);
    c.cmd(&[
        "ACL",
        "SETUSER",
        "relay-source",
        "on",
        &format!(">{PLANTED}"),
        "~*",
        "+@all",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("nutcracker.yml");
    std::fs::write(
        &yaml,
        format!(
            "alpha:\n  listen: 127.0.0.1:1\n  redis: true\n  redis_auth: {POOL_AUTH}\n  servers:\n   - {}:1 s1\n",
            src.addr()
        ),
    )
    .unwrap();
    let base = [
        "check".to_string(),
        "--json".into(),
        "--twemproxy".into(),
        yaml.display().to_string(),
        "--target".into(),
        tgt.url(),
        "--state-dir".into(),
        dir.path().join("state").display().to_string(),
    ];
    let pool = relay().args(&base).output().unwrap();
    let all = text(&pool);
    assert_eq!(pool.status.code(), Some(0), "redis_auth logs in");
    assert!(all.contains("user default may run"), "as the default user");
    let user = relay()
        .args(&base)
        .args(["--source-user", "relay-source"])
        .env("REDIS_RELAY_SOURCE_PASSWORD", PLANTED)
        .output()
        .unwrap();
    let all_user = text(&user);
    assert_eq!(user.status.code(), Some(0), "the ACL user logs in");
    assert!(
        all_user.contains("user relay-source may run"),
        "as relay-source"
    );
    let wrong = relay()
        .args(&base)
        .args(["--source-user", "relay-source"])
        .output()
        .unwrap();
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "relay-source with redis_auth: refused"
    );
    for t in [&all, &all_user, &text(&wrong)] {
        assert_clean("check --twemproxy", t, POOL_AUTH);
        assert_clean("check --twemproxy", t, PLANTED);
    }
}

/// `restore` takes the target's password from `REDIS_RELAY_TARGET_PASSWORD` too, and its
/// errors for a wrong one do not show it.
#[test]
fn restore_takes_the_target_password_from_the_environment() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[&format!("requirepass {PLANTED}")]);
    let mut c = src.client();
    c.cmd(&["SET", "k", "v"]);
    c.cmd(&["SAVE"]);
    let rdb = src.dir.path().join("dump.rdb");
    assert!(rdb.exists(), "SAVE wrote {}", rdb.display());
    let run = |pw: &str| {
        relay()
            .arg("restore")
            .arg(&rdb)
            .args(["--target", &tgt.url(), "-q"])
            .env("REDIS_RELAY_TARGET_PASSWORD", pw)
            .output()
            .unwrap()
    };
    let wrong = run(WRONG);
    assert_ne!(wrong.status.code(), Some(0), "a wrong password fails");
    assert_clean("restore (wrong password)", &text(&wrong), WRONG);
    let ok = run(PLANTED);
    assert_eq!(ok.status.code(), Some(0), "restore logs in");
    assert_clean("restore", &text(&ok), PLANTED);
    let mut t = tgt.client();
    t.cmd(&["AUTH", PLANTED]);
    assert_eq!(t.cmd(&["GET", "k"]).as_text().as_deref(), Some("v"));
}
