//! `--config relay.toml`: every option of `sync` (and `check`, `verify`) in a file. Keys are the
//! long flag names (`state-dir = "/var/lib/redis-relay"`); a flag given on the command line
//! overrides the file. Unknown keys and bad values are errors naming the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file, as written. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub twemproxy: Option<PathBuf>,
    pub pool: Option<String>,
    pub local_server: Option<Vec<String>>,
    pub peer: Option<Vec<String>>,
    pub target_owner: Option<String>,
    pub source: Option<Vec<String>>,
    pub target: Option<String>,
    pub writers: Option<usize>,
    pub on_target_error: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub big_key_bytes: Option<usize>,
    pub commands_only: Option<bool>,
    pub spool_max_bytes: Option<u64>,
    pub listening_port: Option<u16>,
    pub repl_timeout: Option<u64>,
    pub key_prefix: Option<String>,
    pub heartbeat: Option<String>,
    pub quiet: Option<bool>,
    pub log_format: Option<String>,
    pub skip_check: Option<bool>,
    pub allow_eviction: Option<bool>,
    pub if_target_not_empty: Option<String>,
    pub db: Option<Vec<u32>>,
    pub db_map: Option<Vec<String>>,
    pub include_prefix: Option<Vec<String>>,
    pub exclude_prefix: Option<Vec<String>>,
    pub include_regex: Option<Vec<String>>,
    pub exclude_regex: Option<Vec<String>>,
    pub exclude_command: Option<Vec<String>>,
}

/// Check that `value` of `field` is one of `allowed`.
pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> anyhow::Result<()> {
    anyhow::ensure!(
        allowed.contains(&value),
        "{field}: {value:?} is not one of {}",
        allowed.join(", ")
    );
    Ok(())
}

impl FileConfig {
    /// Parse the text of a config file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<FileConfig> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| {
            // toml names the key and shows the line; keep its message whole.
            anyhow::anyhow!("{origin}: {}", e.to_string().trim_end())
        })?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Value checks that serde's types do not express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(v) = &self.on_target_error {
            one_of("on-target-error", v, &["skip", "stop"])?;
        }
        if let Some(v) = &self.if_target_not_empty {
            one_of("if-target-not-empty", v, &["abort", "ignore"])?;
        }
        if let Some(v) = &self.target_owner {
            one_of("target-owner", v, &["shared", "exclusive"])?;
        }
        for s in self.peer.iter().flatten() {
            crate::endpoint::Endpoint::parse(s).map_err(|e| anyhow::anyhow!("peer: {e}"))?;
        }
        if self.local_server.as_ref().is_some_and(|l| !l.is_empty()) && self.twemproxy.is_none() {
            anyhow::bail!("local-server needs twemproxy (the pool it is a server of)");
        }
        if let Some(v) = &self.log_format {
            one_of("log-format", v, &["text", "json"])?;
        }
        if let Some(v) = &self.heartbeat {
            parse_duration(v).map_err(|e| anyhow::anyhow!("heartbeat: {e}"))?;
        }
        if let Some(v) = &self.metrics_addr {
            v.parse::<std::net::SocketAddr>()
                .map_err(|e| anyhow::anyhow!("metrics-addr: {v:?}: {e} (expected HOST:PORT)"))?;
        }
        if let Some(v) = &self.target {
            crate::endpoint::Endpoint::parse(v).map_err(|e| anyhow::anyhow!("target: {e}"))?;
        }
        for s in self.source.iter().flatten() {
            crate::endpoint::Endpoint::parse(s).map_err(|e| anyhow::anyhow!("source: {e}"))?;
        }
        if self.twemproxy.is_some() && self.source.as_ref().is_some_and(|s| !s.is_empty()) {
            anyhow::bail!("twemproxy and source: give one of them, not both");
        }
        if self.writers == Some(0) {
            anyhow::bail!("writers: must be at least 1");
        }
        for m in self.db_map.iter().flatten() {
            crate::pipeline::filter::parse_db_map_entry(m)
                .map_err(|e| anyhow::anyhow!("db-map: {e}"))?;
        }
        for (field, list) in [
            ("include-regex", &self.include_regex),
            ("exclude-regex", &self.exclude_regex),
        ] {
            for r in list.iter().flatten() {
                regex::bytes::Regex::new(r).map_err(|e| anyhow::anyhow!("{field}: {r:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// `500ms`, `1s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mul_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 1s, 2m)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(std::time::Duration::from_micros(
        (v * mul_ms * 1000.0) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = FileConfig::parse(
            r#"
twemproxy = "/etc/nutcracker.yml"
target = "redis://:pw@10.0.0.9:6379"
state-dir = "/var/lib/redis-relay"
metrics-addr = "127.0.0.1:9121"
writers = 4
on-target-error = "stop"
db = [0, 1]
db-map = ["1:0"]
exclude-prefix = ["tmp:"]
include-regex = ["^user:[0-9]+$"]
exclude-command = ["FLUSHALL"]
heartbeat = "1s"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.writers, Some(4));
        assert_eq!(c.heartbeat.as_deref(), Some("1s"));
        let e = FileConfig::parse("heartbeat = \"often\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("heartbeat") && e.contains("often"), "{e}");
        assert_eq!(c.db, Some(vec![0, 1]));
    }

    #[test]
    fn errors_name_the_field() {
        let e = FileConfig::parse("writerz = 3\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("writerz"), "{e}");
        let e = FileConfig::parse("writers = \"many\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("writers"), "{e}");
        let e = FileConfig::parse("on-target-error = \"explode\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("on-target-error") && e.contains("explode"),
            "{e}"
        );
        let e = FileConfig::parse("metrics-addr = \"nowhere\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics-addr"), "{e}");
        let e = FileConfig::parse("db-map = [\"1-0\"]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("db-map"), "{e}");
        let e = FileConfig::parse("exclude-regex = [\"(\"]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exclude-regex"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap().as_millis(), 1000);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("2").unwrap().as_millis(), 2000);
        assert!(parse_duration("0s").is_err());
    }
}
