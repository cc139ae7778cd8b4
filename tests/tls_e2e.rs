//! TLS against real `redis-server`s listening with `tls-port`: the replication link (handshake,
//! RDB, stream, ACKs) and the target's writers over TLS, and each TLS failure (wrong CA,
//! expired certificate, name mismatch, a client certificate required, a plain-text server
//! behind `rediss://`) told clearly by `check` and by `sync`'s prechecks, naming the endpoint.
//! Certificates are made by the test (`support::tls`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;
use support::tls::{Certs, TlsRedis};
use support::{
    assert_union_equal, check_line, relay_cli, relay_json, wait_until, Client, RedisServer, Relay,
};

/// `check --json` with `args`: (exit code, report).
fn check(args: &[&str]) -> (i32, J) {
    relay_json("check", args)
}

fn message(l: &J) -> &str {
    l["message"].as_str().unwrap_or_default()
}

/// Many keys of several types, and values bigger than a TLS record (16 KiB) and than the
/// writers' buffer, through the plain port.
fn preload(c: &mut Client, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let cmds: Vec<Vec<String>> = chunk
            .iter()
            .flat_map(|i| {
                [
                    vec!["SET".into(), format!("str:{i}"), format!("value-{i}")],
                    vec![
                        "HSET".into(),
                        format!("hash:{i}"),
                        "f".into(),
                        i.to_string(),
                    ],
                    vec!["RPUSH".into(), format!("list:{i}"), "a".into(), "b".into()],
                ]
            })
            .collect();
        for r in c.pipeline(&cmds) {
            assert!(!r.is_error(), "{r:?}");
        }
    }
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    c.cmd(&[b"SET".as_slice(), b"big:3mib", &big]);
    c.cmd(&["SET", "ttl:1", "v", "EX", "86400"]);
}

/// Writes on `port` until `stop`, counting them.
fn writer(port: u16, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = Client::connect(port).expect("writer connects");
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            c.cmd(&["SET", &format!("live:{i}"), &i.to_string()]);
            c.cmd(&["INCR", "counter"]);
            i += 1;
            count.store(i, Ordering::Relaxed);
        }
    })
}

/// Wait (30 s at most) until the key `marker`, written last on the source, is on the target.
fn wait_for_marker(t: &mut Client, relay: &Relay) {
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            t.cmd(&["GET", "marker"]),
            redis_relay::resp::Reply::Bulk(_)
        )),
        "the stream did not reach the target:\n{}",
        relay.log_text()
    );
}

#[test]
fn tls_master_and_tls_target_full_sync_and_stream() {
    let certs = Certs::generate();
    // The master requires a client certificate: the replication link shows one.
    let master = TlsRedis::start(&certs, "server", true);
    let target = TlsRedis::start(&certs, "server", false);
    preload(&mut master.server.client(), 20_000);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let during = writer(master.server.port, stop.clone(), written.clone());
    let state = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--source",
        &master.tls_url(),
        "--target",
        &target.tls_url(),
        "--tls-ca-file",
        &certs.arg("ca.pem"),
        "--tls-cert-file",
        &certs.arg("client.pem"),
        "--tls-key-file",
        &certs.arg("client.key"),
        "--target-tls-ca-file",
        &certs.arg("ca.pem"),
        "--state-dir",
        &state.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let relay = Relay::start_synced(&args, state.path(), &master.tls_addr());
    // Writes during the full sync, then after it.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    during.join().unwrap();
    assert!(written.load(Ordering::Relaxed) > 0);
    let mut m = master.server.client();
    for i in 0..500 {
        m.cmd(&["SET", &format!("after:{i}"), &i.to_string()]);
    }
    m.cmd(&["DEL", "str:7"]);
    m.cmd(&["SET", "marker", "end"]);
    wait_for_marker(&mut target.server.client(), &relay);
    assert_union_equal(
        &[master.server.url()],
        &target.server.url(),
        &relay.log_text(),
    );
    // `verify` itself over TLS both ways.
    let out = relay_cli(&[
        "verify",
        "--source",
        &master.tls_url(),
        "--target",
        &target.tls_url(),
        "--tls-ca-file",
        &certs.arg("ca.pem"),
        "--tls-cert-file",
        &certs.arg("client.pem"),
        "--tls-key-file",
        &certs.arg("client.key"),
        "--target-tls-ca-file",
        &certs.arg("ca.pem"),
    ]);
    assert!(
        out.status.success(),
        "verify over TLS: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The master saw the relay as a replica on its TLS port.
    let info = m.info_field("replication", "connected_slaves");
    assert_eq!(info.as_deref(), Some("1"), "{}", relay.log_text());
}

#[test]
fn check_passes_over_tls_and_names_a_wrong_ca() {
    let certs = Certs::generate();
    let src = TlsRedis::start(&certs, "server", false);
    let tgt = TlsRedis::start(&certs, "server", false);
    let ca = certs.arg("ca.pem");
    let other = certs.arg("other-ca.pem");
    let (code, r) = check(&[
        "--source",
        &src.tls_url(),
        "--target",
        &tgt.tls_url(),
        "--tls-ca-file",
        &ca,
        "--target-tls-ca-file",
        &ca,
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        check_line(&r, "reachable", &src.tls_addr())["status"],
        "pass"
    );
    let subject = format!("target {}", tgt.tls_addr());
    assert_eq!(check_line(&r, "reachable", &subject)["status"], "pass");
    // The target's side trusts another CA: the target's line fails, the source's passes.
    let (code, r) = check(&[
        "--source",
        &src.tls_url(),
        "--target",
        &tgt.tls_url(),
        "--tls-ca-file",
        &ca,
        "--target-tls-ca-file",
        &other,
    ]);
    assert_ne!(code, 0, "{r:#}");
    let l = check_line(&r, "tls", &subject);
    assert_eq!(l["status"], "fail");
    assert!(message(l).contains("TLS handshake failed"), "{l}");
    assert!(message(l).contains("unknown CA"), "{l}");
    assert_eq!(
        check_line(&r, "reachable", &src.tls_addr())["status"],
        "pass"
    );
    // The sources' side with the wrong CA.
    let (code, r) = check(&[
        "--source",
        &src.tls_url(),
        "--target",
        &tgt.tls_url(),
        "--tls-ca-file",
        &other,
        "--target-tls-ca-file",
        &ca,
    ]);
    assert_ne!(code, 0, "{r:#}");
    assert!(message(check_line(&r, "tls", &src.tls_addr())).contains("unknown CA"));
    // sync: the precheck fails, exit non-zero, the reason and the endpoint on stderr.
    let state = tempfile::tempdir().unwrap();
    let out = relay_cli(&[
        "sync",
        "--source",
        &src.tls_url(),
        "--target",
        &tgt.tls_url(),
        "--tls-ca-file",
        &ca,
        "--target-tls-ca-file",
        &other,
        "--state-dir",
        &state.path().display().to_string(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&tgt.tls_addr()), "{text}");
    assert!(text.contains("unknown CA"), "{text}");
}

#[test]
fn expired_certificate_and_name_mismatch_are_named() {
    let certs = Certs::generate();
    let expired = TlsRedis::start(&certs, "expired", false);
    let othername = TlsRedis::start(&certs, "othername", false);
    let src = TlsRedis::start(&certs, "server", false);
    let ca = certs.arg("ca.pem");
    for (tgt, reason) in [
        (&expired, "certificate expired"),
        (&othername, "does not name this host"),
    ] {
        let (code, r) = check(&[
            "--source",
            &src.tls_url(),
            "--target",
            &tgt.tls_url(),
            "--tls-ca-file",
            &ca,
            "--target-tls-ca-file",
            &ca,
        ]);
        assert_ne!(code, 0, "{r:#}");
        let l = check_line(&r, "tls", &format!("target {}", tgt.tls_addr()));
        assert!(message(l).contains(reason), "{l}");
    }
    // The name override: the certificate's name checked instead of the host's.
    let (code, r) = check(&[
        "--source",
        &src.tls_url(),
        "--target",
        &othername.tls_url(),
        "--tls-ca-file",
        &ca,
        "--target-tls-ca-file",
        &ca,
        "--target-tls-server-name",
        "redis.example",
    ]);
    assert_eq!(code, 0, "{r:#}");
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let certs = Certs::generate();
    let src = RedisServer::start(&[]);
    let tgt = TlsRedis::start(&certs, "server", true);
    let ca = certs.arg("ca.pem");
    let (code, r) = check(&[
        "--source",
        &src.url(),
        "--target",
        &tgt.tls_url(),
        "--target-tls-ca-file",
        &ca,
    ]);
    assert_ne!(code, 0, "{r:#}");
    let l = check_line(&r, "tls", &format!("target {}", tgt.tls_addr()));
    assert!(message(l).contains("client certificate"), "{l}");
    let (code, r) = check(&[
        "--source",
        &src.url(),
        "--target",
        &tgt.tls_url(),
        "--target-tls-ca-file",
        &ca,
        "--target-tls-cert-file",
        &certs.arg("client.pem"),
        "--target-tls-key-file",
        &certs.arg("client.key"),
    ]);
    assert_eq!(code, 0, "{r:#}");
}

#[test]
fn insecure_accepts_an_unknown_ca_and_warns() {
    let certs = Certs::generate();
    let src = RedisServer::start(&[]);
    let tgt = TlsRedis::start(&certs, "server", false);
    // Default roots (the system's) do not know the test CA.
    let (code, r) = check(&["--source", &src.url(), "--target", &tgt.tls_url()]);
    assert_ne!(code, 0, "{r:#}");
    let l = check_line(&r, "tls", &format!("target {}", tgt.tls_addr()));
    assert!(message(l).contains("unknown CA"), "{l}");
    let out = relay_cli(&[
        "check",
        "--source",
        &src.url(),
        "--target",
        &tgt.tls_url(),
        "--target-tls-insecure",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("WITHOUT VERIFICATION"), "{stderr}");
}

#[test]
fn plain_server_behind_rediss_and_options_without_tls_are_errors() {
    let certs = Certs::generate();
    let src = RedisServer::start(&[]);
    let plain = RedisServer::start(&[]);
    let ca = certs.arg("ca.pem");
    let url = format!("rediss://{}", plain.addr());
    let (code, r) = check(&[
        "--source",
        &src.url(),
        "--target",
        &url,
        "--target-tls-ca-file",
        &ca,
    ]);
    assert_ne!(code, 0, "{r:#}");
    let l = check_line(&r, "tls", &format!("target {}", plain.addr()));
    assert!(message(l).contains("plain-text server"), "{l}");
    // TLS options for a side without TLS would be ignored: refused instead.
    let out = relay_cli(&[
        "check",
        "--source",
        &src.url(),
        "--target",
        &plain.url(),
        "--target-tls-ca-file",
        &ca,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("target-tls-* needs a rediss:// target"),
        "{stderr}"
    );
}

#[test]
fn twemproxy_pool_backends_over_tls_with_source_tls() {
    let certs = Certs::generate();
    let master = TlsRedis::start(&certs, "server", false);
    let target = RedisServer::start(&[]);
    let mut m = master.server.client();
    for i in 0..1000 {
        m.cmd(&["SET", &format!("k:{i}"), &i.to_string()]);
    }
    let dir = tempfile::tempdir().unwrap();
    let yml = dir.path().join("nutcracker.yml");
    // The file has only host:port: --source-tls says the backends speak TLS.
    std::fs::write(
        &yml,
        format!(
            "alpha:\n  listen: 127.0.0.1:{}\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  servers:\n   - {}:1 s1\n",
            support::free_port(),
            master.tls_addr()
        ),
    )
    .unwrap();
    let yml = yml.display().to_string();
    let ca = certs.arg("ca.pem");
    let (code, r) = check(&["--twemproxy", &yml, "--target", &target.url()]);
    assert_ne!(code, 0, "a TLS backend without --source-tls: {r:#}");
    let target_url = target.url();
    let mut args = vec![
        "--twemproxy",
        &yml,
        "--source-tls",
        "--tls-ca-file",
        &ca,
        "--target",
        &target_url,
    ];
    let (code, r) = check(&args);
    assert_eq!(code, 0, "{r:#}");
    let state = dir.path().join("state").display().to_string();
    args.extend(["--state-dir", &state]);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let relay = Relay::start_synced(&args, dir.path(), &master.tls_addr());
    m.cmd(&["SET", "marker", "end"]);
    wait_for_marker(&mut target.client(), &relay);
    assert_union_equal(&[master.server.url()], &target.url(), &relay.log_text());
}
