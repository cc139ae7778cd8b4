//! The sidecar kit in `examples/sidecar/` (Prometheus scrape config and alert rules, Grafana
//! dashboard, systemd unit and template unit, example config): every file parses, every
//! `redis_relay_*` metric it uses is in the metrics table of docs/metrics.md and described in
//! `src/metrics.rs`, and the files agree with each other (metrics port, state dir, config
//! path, the `backend` label of one sidecar per master). `promtool` and `systemd-analyze` are
//! not available here: the PromQL and the unit directives themselves are not checked.

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

/// A systemd unit, read as INI: section -> (key, value) lines in order. Comments and blank
/// lines are skipped; any other line must be `[Section]` or `Key=value` under a section.
fn unit(name: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let text = read(&kit(name));
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            assert!(
                sections.insert(s.to_string(), Vec::new()).is_none(),
                "{name}: [{s}] twice"
            );
            current = Some(s.to_string());
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: not a unit line: {l:?}"));
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name}: bad key in {l:?}"
        );
        let s = current
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: {l:?} before any section"));
        sections
            .get_mut(s)
            .unwrap()
            .push((k.to_string(), v.to_string()));
    }
    for s in ["Unit", "Service", "Install"] {
        assert!(sections.contains_key(s), "{name}: no [{s}]");
    }
    sections
}

/// The values of `key` in `section` of a parsed unit.
fn unit_values<'a>(
    u: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    u[section]
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The port of a `HOST:PORT`.
fn port(addr: &str) -> &str {
    addr.rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr}: not HOST:PORT"))
        .1
}

/// The metrics table of docs/metrics.md: name -> type.
fn readme_metrics() -> BTreeMap<String, String> {
    let text = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"));
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
        "docs/metrics.md: metrics table not found: {table:?}"
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
            "{file}: {n} is not in the metrics table of docs/metrics.md"
        );
        assert!(
            described.contains(&format!("\"{base}\"")),
            "{file}: {base} is not described in src/metrics.rs"
        );
    }
}

/// Every metric the library emits is in the metrics table of docs/metrics.md (the other direction).
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
            "{n} is emitted but not in docs/metrics.md"
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
    // One sidecar per master host, all on the port of relay.toml's metrics-addr (and of the
    // template unit's METRICS_ADDR), each target labelled with its backend.
    let cfg = FileConfig::parse(&read(&kit("relay.toml")), "relay.toml").unwrap();
    let metrics_addr = cfg
        .metrics_addr
        .expect("relay.toml: metrics-addr")
        .to_string();
    let metrics_addr = metrics_addr.as_str();
    assert!(
        !metrics_addr.starts_with("127."),
        "relay.toml: metrics-addr {metrics_addr} cannot be scraped from another host"
    );
    let template = unit("redis-relay@.service");
    assert!(
        unit_values(&template, "Service", "Environment")
            .contains(&format!("METRICS_ADDR={metrics_addr}").as_str()),
        "redis-relay@.service: METRICS_ADDR is not relay.toml's metrics-addr {metrics_addr}"
    );
    let statics = job["static_configs"].as_array().expect("static_configs");
    assert!(
        statics.len() >= 2,
        "prometheus.yml: one target per master host"
    );
    let mut hosts = BTreeSet::new();
    let mut backends = BTreeSet::new();
    for s in statics {
        let backend = s["labels"]["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("prometheus.yml: {s}: no backend label"));
        assert!(!backend.is_empty());
        assert!(backends.insert(backend), "backend {backend} twice");
        let targets = s["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 1, "{backend}: one target (its sidecar)");
        let target = targets[0].as_str().expect("target");
        assert_eq!(
            port(target),
            port(metrics_addr),
            "prometheus.yml scrapes {target}, not the port of relay.toml's metrics-addr"
        );
        assert!(hosts.insert(target), "{target} twice");
    }
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
        "RedisRelaySidecarDown",
        "RedisRelayDeletionDeferred",
    ] {
        assert!(alerts.contains(a), "missing alert {a}");
    }
    let rule = |name: &str| {
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .find(|r| r["alert"] == name)
            .unwrap()
    };
    let disconnected = rule("RedisRelaySourceDisconnected");
    assert_eq!(disconnected["expr"], "redis_relay_connected == 0");
    assert_eq!(disconnected["for"], "1m");
    let down = rule("RedisRelaySidecarDown");
    assert_eq!(down["expr"], "up{job=\"redis-relay\"} == 0");
    assert_eq!(down["for"], "1m");
    let deferred = rule("RedisRelayDeletionDeferred");
    assert_eq!(
        deferred["expr"],
        "redis_relay_deferred_deletion_age_seconds > 300"
    );
    // Per backend: the summaries name the backend (prometheus.yml's label).
    for a in [
        "RedisRelaySidecarDown",
        "RedisRelayDeletionDeferred",
        "RedisRelayLagBytesHigh",
        "RedisRelayLagSecondsHigh",
        "RedisRelayLagSecondsEstimateHigh",
    ] {
        let summary = rule(a)["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("{{ $labels.backend }}"),
            "{a}: the summary does not name the backend: {summary}"
        );
    }
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
        // Per backend (sidecars).
        "up{job=\"redis-relay\"",
        "redis_relay_deferred_deletions{backend=~\"$backend\"",
        "redis_relay_deferred_deletion_age_seconds{backend=~\"$backend\"",
        "sum by (backend, source, cause) (increase(redis_relay_deletions_total",
        "sum by (backend, source, reason) (increase(redis_relay_deletions_kept_total",
        "rate(redis_relay_peer_checks_total",
    ] {
        assert!(all.contains(needle), "no panel uses {needle}");
    }
    let vars = doc["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(
        var("backend")["query"]["query"],
        "label_values(redis_relay_connected, backend)"
    );
    // The source list follows the backends picked, so every panel filtered by $source does.
    assert!(var("source")["query"]["query"]
        .as_str()
        .unwrap()
        .contains("backend=~\"$backend\""));
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
    // One file for every host: each sidecar picks its own backends.
    assert!(cfg.twemproxy.is_some() && cfg.source.is_none());
    assert_eq!(cfg.local_server, Some(vec!["auto".to_string()]));
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

#[test]
fn sidecar_template_unit() {
    let single = unit("redis-relay.service");
    let template = unit("redis-relay@.service");
    let exec = unit_values(&template, "Service", "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    let args: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(
        &args[..4],
        [
            "/usr/local/bin/redis-relay",
            "sync",
            "--config",
            "/etc/redis-relay/relay.toml"
        ]
    );
    let flag = |name: &str| {
        let i = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("ExecStart lacks {name}"));
        args[i + 1]
    };
    assert_eq!(flag("--local-server"), "%i");
    assert_eq!(flag("--state-dir"), "/var/lib/redis-relay/%i");
    assert_eq!(flag("--metrics-addr"), "${METRICS_ADDR}");
    assert_eq!(
        unit_values(&template, "Service", "StateDirectory"),
        ["redis-relay/%i"]
    );
    assert_eq!(
        unit_values(&template, "Service", "WorkingDirectory"),
        ["/var/lib/redis-relay/%i"]
    );
    // The same user, stop behaviour, restart policy and hardening as redis-relay.service:
    // every other [Service] line of it, and the same [Install].
    let own = ["ExecStart", "StateDirectory", "WorkingDirectory"];
    for (k, v) in &single["Service"] {
        if own.contains(&k.as_str()) {
            continue;
        }
        assert!(
            template["Service"].contains(&(k.clone(), v.clone())),
            "redis-relay@.service lacks {k}={v} of redis-relay.service"
        );
    }
    assert_eq!(template["Install"], single["Install"]);
    for k in ["StartLimitIntervalSec", "StartLimitBurst", "After"] {
        assert_eq!(
            unit_values(&template, "Unit", k),
            unit_values(&single, "Unit", k),
            "[Unit] {k}"
        );
    }
    // The instance name reaches the relay as --local-server: the header says how to enable one.
    assert!(read(&kit("redis-relay@.service")).contains("systemctl enable --now redis-relay@"));
}
