//! The sidecar kit in `examples/sidecar/` (Prometheus scrape config and alert rules, Grafana
//! dashboard, systemd unit, example config): every file parses, every `redis_relay_*` metric
//! it uses is in the README's metrics table and described in `src/metrics.rs`, and the files
//! agree with each other (metrics address, state dir, config path). `promtool` is not
//! available here: the PromQL itself is not parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use redis_relay::config::FileConfig;
use regex::Regex;

fn kit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/sidecar")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(name: &str) -> serde_json::Value {
    let p = kit(name);
    serde_saphyr::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every string in a document.
fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn metric_names(text: &str) -> BTreeSet<String> {
    Regex::new(r"redis_relay_[a-z_]+")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// The README's metrics table: name -> type.
fn readme_metrics() -> BTreeMap<String, String> {
    let text = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let row = Regex::new(r"^\| `(redis_relay_[a-z_]+)(?:\{[^}]*\})?` \| ([a-z]+)").unwrap();
    let table: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let c = row.captures(l)?;
            Some((c[1].to_string(), c[2].to_string()))
        })
        .collect();
    assert!(
        table.len() >= 20,
        "README metrics table not found: {table:?}"
    );
    table
}

/// A name used in a query is documented: itself, or a histogram's `_bucket`/`_sum`/`_count`.
fn check_documented(file: &str, names: &BTreeSet<String>) {
    let table = readme_metrics();
    let described = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"));
    assert!(!names.is_empty(), "{file}: no redis_relay_* metric found");
    for n in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let b = n.strip_suffix(suffix)?;
                (table.get(b).map(String::as_str) == Some("histogram")).then_some(b)
            })
            .unwrap_or(n);
        assert!(
            table.contains_key(base),
            "{file}: {n} is not in the README's metrics table"
        );
        assert!(
            described.contains(&format!("\"{base}\"")),
            "{file}: {base} is not described in src/metrics.rs"
        );
    }
}

/// Every metric the library emits is in the README table (the other direction).
#[test]
fn emitted_metrics_are_documented() {
    let table = readme_metrics();
    let mut emitted = BTreeSet::new();
    let call =
        Regex::new(r#"metrics::(?:gauge|counter|histogram)!\(\s*"(redis_relay_[a-z_]+)""#).unwrap();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                for c in call.captures_iter(&read(&p)) {
                    emitted.insert(c[1].to_string());
                }
            }
        }
    }
    for n in [
        "redis_relay_lag_seconds",
        "redis_relay_lag_seconds_estimate",
        "redis_relay_snapshot_keys",
    ] {
        assert!(emitted.contains(n), "{n} is not emitted");
    }
    for n in &emitted {
        assert!(
            table.contains_key(n),
            "{n} is emitted but not in the README"
        );
    }
}

#[test]
fn prometheus_scrape_config() {
    let doc = yaml("prometheus.yml");
    let rule_files: Vec<&str> = doc["rule_files"]
        .as_array()
        .expect("rule_files")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(rule_files, ["alerts.yml"]);
    let jobs = doc["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "redis-relay")
        .expect("a redis-relay job");
    assert_eq!(job["metrics_path"], "/metrics");
    let targets = job["static_configs"][0]["targets"].as_array().unwrap();
    // The relay's metrics-addr of the example config.
    let cfg = FileConfig::parse(&read(&kit("relay.toml")), "relay.toml").unwrap();
    assert_eq!(
        targets[0].as_str(),
        cfg.metrics_addr.as_deref(),
        "prometheus.yml scrapes another address than relay.toml's metrics-addr"
    );
}

#[test]
fn alert_rules() {
    let doc = yaml("alerts.yml");
    let groups = doc["groups"].as_array().expect("groups");
    let mut alerts = BTreeSet::new();
    let mut names = BTreeSet::new();
    let duration = Regex::new(r"^[0-9]+[smh]$").unwrap();
    for g in groups {
        assert!(g["name"].is_string());
        for r in g["rules"].as_array().expect("rules") {
            let alert = r["alert"].as_str().expect("alert name");
            assert!(alerts.insert(alert.to_string()), "{alert} twice");
            let expr = r["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty());
            assert!(
                ["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{alert}: severity"
            );
            assert!(r["annotations"]["summary"].is_string(), "{alert}: summary");
            if let Some(f) = r.get("for") {
                let f = f.as_str().expect("for: a duration");
                assert!(duration.is_match(f), "{alert}: for {f}");
            }
            // Balanced parentheses and braces: the least a PromQL parser would demand.
            for (o, c) in [('(', ')'), ('{', '}'), ('[', ']')] {
                assert_eq!(
                    expr.matches(o).count(),
                    expr.matches(c).count(),
                    "{alert}: unbalanced {o}{c} in {expr}"
                );
            }
            names.extend(metric_names(expr));
        }
    }
    for a in [
        "RedisRelayLagBytesHigh",
        "RedisRelayLagSecondsHigh",
        "RedisRelayTargetErrors",
        "RedisRelaySourceDisconnected",
        "RedisRelayBacklogRisk",
        "RedisRelaySpoolGrowing",
    ] {
        assert!(alerts.contains(a), "missing alert {a}");
    }
    let disconnected = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == "RedisRelaySourceDisconnected")
        .unwrap();
    assert_eq!(disconnected["expr"], "redis_relay_connected == 0");
    assert_eq!(disconnected["for"], "1m");
    check_documented("alerts.yml", &names);
}

#[test]
fn grafana_dashboard() {
    let p = kit("grafana-dashboard.json");
    let doc: serde_json::Value = serde_json::from_str(&read(&p)).expect("dashboard JSON");
    assert!(doc["title"].is_string() && doc["uid"].is_string());
    assert!(doc["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = doc["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "id twice"
        );
        let pos = &panel["gridPos"];
        assert!(pos["w"].as_u64().unwrap() <= 24 && pos["h"].as_u64().unwrap() > 0);
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", panel["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    let all = exprs.join("\n");
    // The panels asked for.
    for needle in [
        "redis_relay_lag_bytes",
        "redis_relay_lag_seconds",
        "redis_relay_applied_offset",
        "redis_relay_master_offset",
        "rate(redis_relay_commands_applied_total",
        "rate(redis_relay_bytes_received_total",
        "redis_relay_rdb_bytes_loaded{source=~\"$source\"} / (redis_relay_rdb_bytes_total",
        "redis_relay_sync_state",
        "redis_relay_target_errors_total",
        "histogram_quantile(0.99, sum by (le) (rate(redis_relay_apply_latency_seconds_bucket",
        "redis_relay_spool_bytes",
    ] {
        assert!(all.contains(needle), "no panel uses {needle}");
    }
    let mut names = metric_names(&all);
    let mut rest = Vec::new();
    strings(&doc["templating"], &mut rest);
    names.extend(rest.iter().flat_map(|s| metric_names(s)));
    check_documented("grafana-dashboard.json", &names);
}

#[test]
fn example_config_and_systemd_unit() {
    let cfg = FileConfig::parse(&read(&kit("relay.toml")), "relay.toml").unwrap();
    assert_eq!(
        cfg.state_dir.as_deref(),
        Some(Path::new("/var/lib/redis-relay"))
    );
    assert!(cfg.heartbeat.is_some());
    let unit = read(&kit("redis-relay.service"));
    let lines: BTreeSet<&str> = unit.lines().map(str::trim).collect();
    for l in [
        "[Unit]",
        "[Service]",
        "[Install]",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=15",
        "StateDirectory=redis-relay",
        "ExecStart=/usr/local/bin/redis-relay sync --config /etc/redis-relay/relay.toml",
    ] {
        assert!(lines.contains(l), "redis-relay.service lacks {l:?}");
    }
    for l in unit.lines().map(str::trim) {
        assert!(
            l.is_empty() || l.starts_with('#') || l.starts_with('[') || l.contains('='),
            "not a unit line: {l:?}"
        );
    }
}
