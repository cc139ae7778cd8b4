//! The README's quick start, run as written: the `sh` block under "Quick start" is executed by
//! bash in an empty directory (its fixed ports: masters 7001 and 7002, target 7100, nutcracker
//! 22121, metrics 9121), with `cargo run --release --` replaced by the binary under test, and
//! every output the README shows is compared with what the command printed.
//!
//! The README shows an output as comment lines `# → text` under a command (or at the end of
//! its line). Lines must match one for one; `…` inside a line matches any text, and a line that
//! is only `# → …` matches any number of lines.

use std::path::Path;
use std::process::{Command, Stdio};

/// The quick start's script: the first `sh` block after the "Quick start" heading.
fn quick_start() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Quick start")
        .nth(1)
        .expect("README: no \"## Quick start\" section");
    section
        .split("```sh\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("README: no sh block in the quick start")
        .to_string()
}

/// One command whose output the README shows.
#[derive(Debug)]
struct Shown {
    command: String,
    expected: Vec<String>,
}

/// The script for bash, and the outputs it must print: each command with shown output runs
/// as `{ command; } > out.<n>` (a group, not a subshell: `%1` still names the relay's job).
fn instrument(script: &str) -> (String, Vec<Shown>) {
    let relay = env!("CARGO_BIN_EXE_redis-relay");
    let mut shown: Vec<Shown> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    // The last command line, not yet emitted: it may get shown output on the next lines.
    let mut pending: Option<String> = None;
    let flush = |pending: &mut Option<String>, lines: &mut Vec<String>, shown: &[Shown]| {
        if let Some(cmd) = pending.take() {
            match shown.last() {
                Some(s) if s.command == cmd => {
                    let n = shown.len() - 1;
                    lines.push(format!("{{ {cmd}; }} > out.{n}"));
                }
                _ => lines.push(cmd),
            }
        }
    };
    let mut continued = String::new();
    for raw in script.lines() {
        let line = raw.replace("cargo run --release -- ", &format!("{relay} "));
        if let Some(out) = line.trim_start().strip_prefix("# → ") {
            let cmd = pending.clone().expect("`# →` without a command before it");
            if shown.last().is_none_or(|s| s.command != cmd) {
                shown.push(Shown {
                    command: cmd,
                    expected: Vec::new(),
                });
            }
            shown.last_mut().unwrap().expected.push(out.to_string());
            continue;
        }
        flush(&mut pending, &mut lines, &shown);
        if let Some(head) = line.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        let full = std::mem::take(&mut continued) + &line;
        match full.split_once("# → ") {
            Some((cmd, out)) if !cmd.trim().is_empty() => {
                shown.push(Shown {
                    command: cmd.trim().to_string(),
                    expected: vec![out.to_string()],
                });
                pending = Some(cmd.trim().to_string());
            }
            _ if full.trim().is_empty() || full.trim_start().starts_with('#') => lines.push(full),
            _ if full.contains("<<") => lines.push(full),
            _ => pending = Some(full),
        }
    }
    flush(&mut pending, &mut lines, &shown);
    (lines.join("\n") + "\n", shown)
}

/// `pattern` (with `…` for any text) matches `text`.
fn line_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part) && rest.len() >= part.len();
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

/// The expected lines (`…` alone: any number of lines) match the output's lines.
fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "…" => {
            (0..=actual.len()).any(|k| lines_match(rest, &actual[k..]))
        }
        Some((e, rest)) => {
            !actual.is_empty() && line_matches(e, actual[0]) && lines_match(rest, &actual[1..])
        }
    }
}

/// Stops what the quick start started, also when it failed half-way.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for port in ["7001", "7002", "7100"] {
            let _ = Command::new("redis-cli")
                .args(["-p", port, "shutdown", "nosave"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(pid) = std::fs::read_to_string(self.0.join("nutcracker.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = Command::new("pkill")
            .args(["-f", "redis-relay sync --twemproxy nutcracker.yml"])
            .status();
    }
}

#[test]
fn the_quick_start_prints_what_the_readme_shows() {
    let (script, shown) = instrument(&quick_start());
    assert!(
        shown.len() >= 4,
        "the quick start shows too little: {shown:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path());
    std::fs::write(dir.path().join("quick-start.sh"), &script).unwrap();
    let path = format!(
        "/usr/sbin:/usr/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    // Files, not pipes: a background process left running must not keep the test waiting.
    let file = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let status = Command::new("timeout")
        .args(["120", "bash", "-e", "quick-start.sh"])
        .current_dir(dir.path())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(file("script.stdout"))
        .stderr(file("script.stderr"))
        .status()
        .expect("run bash");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let log = read("relay.log");
    assert!(
        status.success(),
        "the quick start failed ({status:?}):\n{script}\nstdout:\n{}\nstderr:\n{}\nrelay.log:\n{log}",
        read("script.stdout"),
        read("script.stderr")
    );
    for (n, s) in shown.iter().enumerate() {
        let actual =
            std::fs::read_to_string(dir.path().join(format!("out.{n}"))).unwrap_or_default();
        let lines: Vec<&str> = actual.lines().collect();
        assert!(
            lines_match(&s.expected, &lines),
            "`{}` printed:\n{actual}\nthe README shows:\n{}\nrelay.log:\n{log}",
            s.command,
            s.expected.join("\n")
        );
    }
}

#[test]
fn the_output_patterns_mean_what_the_module_says() {
    assert!(line_matches("a…c", "abbbc"));
    assert!(!line_matches("a…c", "abbb"));
    assert!(line_matches("exact", "exact"));
    assert!(!line_matches("exact", "exactly"));
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&e(&["x", "…", "z"]), &["x", "1", "2", "z"]));
    assert!(lines_match(&e(&["x", "…"]), &["x"]));
    assert!(!lines_match(&e(&["x", "z"]), &["x", "1", "z"]));
    let (script, shown) =
        instrument("echo 1   # → 1\nprintf 'a\\nb\\n'\n# → a\n# → …\nfoo \\\n  bar\n");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(script.contains("{ echo 1; } > out.0"), "{script}");
    assert!(
        script.contains("{ printf 'a\\nb\\n'; } > out.1"),
        "{script}"
    );
    assert!(script.contains("foo   bar"), "{script}");
}
