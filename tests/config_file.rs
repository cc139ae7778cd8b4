//! `--config relay.toml`: options from the file, flags over the file, errors naming the field.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{free_port, relay_cli, wait_until, RedisServer};

fn write(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("relay.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn options_come_from_the_file_and_flags_override_it() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&["maxmemory-policy allkeys-lru"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &format!(
            "source = [\"{}\"]\ntarget = \"{}\"\nallow-eviction = true\nstate-dir = \"{}\"\n",
            src.url(),
            tgt.url(),
            dir.path().join("state").display()
        ),
    );
    let out = relay_cli(&["check", "--config", &cfg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("source {}", src.addr())), "{text}");
    assert!(
        text.contains("WARN") && text.contains("allowed by --allow-eviction"),
        "{text}"
    );
    // A flag overrides the file: another target.
    let other = RedisServer::start(&[]);
    let out = relay_cli(&["check", "--config", &cfg, "--target", &other.url()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("target {}", other.addr())), "{text}");
    assert!(!text.contains(&format!("target {}", tgt.addr())), "{text}");
}

#[test]
fn sync_reads_every_option_from_the_file() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    src.client().cmd(&["SET", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write(
        dir.path(),
        &format!(
            "source = [\"{}\"]\ntarget = \"{}\"\nstate-dir = \"{}\"\nmetrics-addr = \"127.0.0.1:{port}\"\nwriters = 2\nquiet = true\nlog-format = \"json\"\nrepl-timeout = 30\nkey-prefix = \"redis-relay:\"\n",
            src.url(),
            tgt.url(),
            dir.path().join("state").display()
        ),
    );
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redis-relay"))
        .args(["sync", "--config", &cfg])
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let mut t = tgt.client();
    let ok = wait_until(Duration::from_secs(20), || {
        matches!(t.cmd(&["GET", "k"]).as_text().as_deref(), Some("v"))
    });
    let metrics = support::http_get(port, "/metrics").unwrap_or_default();
    support::stop_child(&mut child);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(ok, "the key was copied; log:\n{log}");
    assert!(metrics.contains("redis_relay_lag_bytes"), "{metrics}");
    assert!(log.lines().any(|l| l.starts_with('{')), "JSON logs: {log}");
    assert!(dir.path().join("state").is_dir());
}

#[test]
fn unknown_fields_and_bad_values_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, field) in [
        ("targett = \"redis://127.0.0.1:1\"\n", "targett"),
        ("writers = \"four\"\n", "writers"),
        ("writers = 0\n", "writers"),
        ("on-target-error = \"explode\"\n", "on-target-error"),
        ("if-target-not-empty = \"maybe\"\n", "if-target-not-empty"),
        ("metrics-addr = \"localhost\"\n", "metrics-addr"),
        ("target = \"http://x\"\n", "target"),
        ("db = [\"zero\"]\n", "db"),
        ("db-map = [\"1=0\"]\n", "db-map"),
        ("include-regex = [\"[\"]\n", "include-regex"),
        ("listening-port = 70000\n", "listening-port"),
    ] {
        let cfg = write(dir.path(), text);
        let out = relay_cli(&[
            "check",
            "--config",
            &cfg,
            "--source",
            "redis://127.0.0.1:1",
            "--target",
            "redis://127.0.0.1:2",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(field) && err.contains("relay.toml"),
            "{text}: error should name {field}: {err}"
        );
    }
    let out = relay_cli(&["check", "--config", "/nonexistent/relay.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/relay.toml"));
}

/// `--flag` names in `text` (`--if-target-not-empty abort|ignore` gives `--if-target-not-empty`).
fn flags_in(text: &str) -> std::collections::BTreeSet<String> {
    text.match_indices("--")
        .map(|(i, _)| {
            let name: String = text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            format!("--{name}")
        })
        .filter(|f| f.len() > 2)
        .collect()
}

/// The configuration reference (docs/configuration.md): its "Options of `sync`" table and its
/// "Config file" section against the options themselves (`RunOptions` and `sync --help`), both
/// ways: the reference cannot drift from the definitions.
#[test]
fn the_configuration_reference_documents_every_option() {
    use redis_relay::config::RunOptions;
    use std::collections::BTreeSet;

    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let after = readme
        .split("Options of `sync`")
        .nth(1)
        .expect("docs/configuration.md: the options table");
    let rows: Vec<&str> = after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    assert!(
        rows.len() > 20,
        "docs/configuration.md: the options table: {rows:?}"
    );
    // The first column of each row (`\|` inside a cell is not a column).
    let table: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| flags_in(r.replace("\\|", "/").split('|').nth(1).unwrap_or("")))
        .collect();

    let out = support::relay_cli(&["sync", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    // Option lines of the help: `  -q, --quiet`, `      --state-dir <STATE_DIR>`.
    let options: BTreeSet<String> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| flags_in(l.split('<').next().unwrap_or("")))
        .collect();
    for f in &table {
        assert!(
            options.contains(f),
            "the reference's table has {f}, which is not an option of `redis-relay sync`: {options:?}"
        );
    }
    // And the other way: every option of `sync --help` is in the table.
    for f in &options {
        assert!(
            table.contains(f) || ["--help", "--version"].contains(&f.as_str()),
            "`redis-relay sync --help` has {f}, which the reference's table lacks"
        );
    }

    let keys: BTreeSet<String> = RunOptions::KEYS
        .iter()
        .map(|k| k.replace('_', "-"))
        .collect();
    for k in &keys {
        assert!(
            table.contains(&format!("--{k}")),
            "--{k} is missing from the reference's options table"
        );
    }
    // "any option of the table above but `--config` itself" is a key of the file.
    for f in &table {
        assert!(
            f == "--config" || keys.contains(&f[2..]),
            "the reference's table has {f}, which the config file does not accept"
        );
    }

    let section = readme
        .split("## Config file")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/configuration.md: the Config file section");
    assert!(
        section.contains("any option of the table above"),
        "{section}"
    );
    let example = section
        .split("```toml")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("docs/configuration.md: the config file example");
    let mut shown = 0;
    for line in example.lines() {
        let line = line.trim().trim_start_matches('#').trim();
        if let Some((key, _)) = line.split_once(" = ") {
            shown += 1;
            assert!(
                keys.contains(key.trim()),
                "the reference's config example: {key} is no option"
            );
        }
    }
    assert!(shown > 5, "{example}");
    // And the example parses (its commented lines aside).
    RunOptions::parse(example, "docs/configuration.md").unwrap();
}
