//! The house rules, checked on the source tree (no server needed):
//!
//! - the data path reads one way: `source` → `pipeline` → `target`, each stage importing only
//!   stages downstream of it and the shared vocabulary (`endpoint`, `resp`, `rdb`, `batch`,
//!   `spool`); the vocabulary imports only itself; only `relay` wires stages together, and no
//!   stage or vocabulary module imports `relay` or the side modules (`check`, `verify`,
//!   `restore`, `config`, `metrics`, `progress`, `status`);
//! - no import cycle between top-level modules, nor between the files of one module;
//! - no function longer than 80 lines unless a `// Long:` comment above it says why.
//!
//! The module graph is read from `use` paths and `crate::`/`super::` paths in the code (not in
//! comments or test modules). `cargo test --test layout -- --nocapture graph` prints it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Shared vocabulary: any module may import these; they import only each other.
const VOCABULARY: &[&str] = &["endpoint", "resp", "rdb", "batch", "spool"];
/// The data path, upstream first.
const STAGES: &[&str] = &["source", "pipeline", "target"];
/// Wires the stages (imports anything).
const WIRING: &[&str] = &["relay"];
/// Beside the data path (import anything but are imported by nothing on it).
const SIDE: &[&str] = &[
    "check", "verify", "restore", "config", "metrics", "progress", "status",
];

const MAX_FN_LINES: usize = 80;

struct SourceFile {
    /// Module path: `["pipeline", "source_loop"]`, `["lib"]`.
    module: Vec<String>,
    path: PathBuf,
    /// The code without comments and without `#[cfg(test)]` items.
    code: String,
    /// The file as written (for function lengths).
    text: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read_tree(dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(src_dir()).expect("under src");
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            let text = std::fs::read_to_string(&p).expect("read source");
            out.push(SourceFile {
                module,
                path: p,
                code: strip(&text),
                text,
            });
        }
    }
}

/// The code without `//` comments and without `#[cfg(test)]` items (a test module may import
/// anything it tests).
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut skip_until: Option<String> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(end) = &skip_until {
            if line == end {
                skip_until = None;
            }
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let indent = &line[..line.len() - trimmed.len()];
            // A one-line item ends at its `;`; a block ends at the brace of its indentation.
            if lines.peek().is_some_and(|n| n.trim_end().ends_with(';')) {
                lines.next();
            } else {
                skip_until = Some(format!("{indent}}}"));
            }
            continue;
        }
        out.push_str(strip_comment(line));
        out.push('\n');
    }
    out
}

/// `line` up to a `//` comment that is not inside a string (`"redis://"` stays).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i + 1 < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && bytes[i + 1] == b'/' => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// Every path this file names in the crate, resolved to absolute module paths (`super::`
/// resolved against the file's module).
fn crate_paths(f: &SourceFile) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code = &f.code;
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let is_super = code[start..].starts_with("super::");
        let rest = &code[start..];
        let (prefix, tail) = if is_super {
            let mut parent = f.module.clone();
            let mut tail = rest;
            while let Some(t) = tail.strip_prefix("super::") {
                parent.pop();
                tail = t;
            }
            // `super` of a file module: its parent directory's module.
            (parent, tail)
        } else {
            (Vec::new(), &rest["crate::".len()..])
        };
        for p in expand(tail) {
            let mut full = prefix.clone();
            full.extend(p);
            out.push(full);
        }
    }
    out
}

/// The paths of `a::b::{c, d::{e}}` (at the start of `s`).
fn expand(s: &str) -> Vec<Vec<String>> {
    let mut segs: Vec<String> = Vec::new();
    let mut rest = s;
    if let Some(group) = rest.strip_prefix('{') {
        let body = &group[..matching_brace(group)];
        return split_top(body)
            .into_iter()
            .flat_map(|item| expand(item.trim()))
            .collect();
    }
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            segs.push(rest[..end].to_string());
        }
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix("::") {
            if let Some(group) = r.strip_prefix('{') {
                let body = &group[..matching_brace(group)];
                let mut out = Vec::new();
                for item in split_top(body) {
                    for tail in expand(item.trim()) {
                        let mut p = segs.clone();
                        p.extend(tail);
                        out.push(p);
                    }
                }
                return out;
            }
            rest = r;
            continue;
        }
        return vec![segs];
    }
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Module names: every file's module path, for telling a module from an item.
fn modules(files: &[SourceFile]) -> BTreeSet<Vec<String>> {
    files.iter().map(|f| f.module.clone()).collect()
}

/// `path` cut to the longest prefix that is a module.
fn module_of(path: &[String], mods: &BTreeSet<Vec<String>>) -> Vec<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| mods.contains(p))
        .unwrap_or_default()
}

/// Edges `from -> to` between modules at `depth` path segments (1: top-level modules).
fn graph(files: &[SourceFile], depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        if f.module == ["lib"] || f.module == ["main"] {
            continue;
        }
        let from = f.module[..f.module.len().min(depth)].join("::");
        g.entry(from.clone()).or_default();
        for p in crate_paths(f) {
            let m = module_of(&p, &mods);
            if m.is_empty() {
                continue;
            }
            let to = m[..m.len().min(depth)].join("::");
            if to != from {
                g.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    g
}

fn load() -> Vec<SourceFile> {
    let mut files = Vec::new();
    read_tree(&src_dir(), &mut files);
    assert!(files.len() > 20, "read only {} files of src/", files.len());
    files
}

fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Depth-first search for back edges; each one found is reported with its path.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            out.push(c);
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, stack, done, out);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, g, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

fn kind(m: &str) -> &'static str {
    if VOCABULARY.contains(&m) {
        "vocabulary"
    } else if STAGES.contains(&m) {
        "stage"
    } else if WIRING.contains(&m) {
        "wiring"
    } else if SIDE.contains(&m) {
        "side"
    } else {
        "unknown"
    }
}

/// Why `from` may not import `to` (`None`: it may).
fn forbidden(from: &str, to: &str) -> Option<String> {
    match (kind(from), kind(to)) {
        ("unknown", _) | (_, "unknown") => Some(format!(
            "{from} -> {to}: every top-level module must be placed in tests/layout.rs"
        )),
        ("vocabulary", "vocabulary") => None,
        ("vocabulary", k) => Some(format!("vocabulary module {from} imports {k} module {to}")),
        ("stage", "vocabulary") => None,
        ("stage", "stage") => {
            let (a, b) = (pos(from), pos(to));
            (b < a).then(|| format!("stage {from} imports {to}, which is upstream of it"))
        }
        ("stage", k) => Some(format!("stage {from} imports {k} module {to}")),
        _ => None,
    }
}

fn pos(stage: &str) -> usize {
    STAGES.iter().position(|s| *s == stage).expect("a stage")
}

#[test]
fn the_data_path_reads_one_way() {
    let files = load();
    let g = graph(&files, 1);
    let mut bad = Vec::new();
    for (from, tos) in &g {
        for to in tos {
            if let Some(why) = forbidden(from, to) {
                let who: Vec<String> = files
                    .iter()
                    .filter(|f| f.module[0] == *from)
                    .filter(|f| {
                        let mods = modules(&files);
                        crate_paths(f)
                            .iter()
                            .any(|p| module_of(p, &mods).first() == Some(to))
                    })
                    .map(|f| f.path.display().to_string())
                    .collect();
                bad.push(format!("{why} (in {})", who.join(", ")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the flow:\n{}",
        bad.join("\n")
    );
    // The check itself sees imports: the pipeline uses the target and the batch vocabulary.
    assert!(g["pipeline"].contains("target") && g["pipeline"].contains("batch"));
}

#[test]
fn no_import_cycles() {
    let files = load();
    let top = cycles(&graph(&files, 1));
    assert!(top.is_empty(), "cycles between modules: {top:?}");
    let sub = cycles(&graph(&files, 2));
    let sub: Vec<_> = sub.into_iter().filter(|c| c.len() > 2).collect();
    assert!(sub.is_empty(), "cycles between files of a module: {sub:?}");
}

#[test]
fn the_checks_catch_what_they_forbid() {
    // The rules themselves, on made-up edges.
    assert!(forbidden("target", "pipeline").is_some());
    assert!(forbidden("pipeline", "source").is_some());
    assert!(forbidden("batch", "target").is_some());
    assert!(forbidden("pipeline", "relay").is_some());
    assert!(forbidden("source", "target").is_none());
    assert!(forbidden("relay", "source").is_none());
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g).len(), 1);
    let f = SourceFile {
        module: vec!["pipeline".into(), "x".into()],
        path: PathBuf::new(),
        code: strip("use super::{a::B, c};\nuse crate::target::{d, e::{F}}; // crate::relay\n#[cfg(test)]\nmod tests {\n    use crate::relay;\n}\n"),
        text: String::new(),
    };
    let paths = crate_paths(&f);
    assert!(paths.contains(&vec!["target".to_string(), "e".into(), "F".into()]));
    assert!(paths.contains(&vec!["pipeline".to_string(), "a".into(), "B".into()]));
    assert!(!paths.iter().any(|p| p[0] == "relay"), "{paths:?}");
}

/// Functions (`fn` at any indentation) longer than [`MAX_FN_LINES`], without a `// Long:`
/// comment among the lines right above them.
fn long_functions(f: &SourceFile) -> Vec<(String, usize)> {
    let lines: Vec<&str> = f.text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let is_fn = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        if !is_fn || t.ends_with(';') {
            i += 1;
            continue;
        }
        let close = format!("{indent}}}");
        let end = (i..lines.len())
            .find(|&j| lines[j] == close || (j == i && t.ends_with('}')))
            .unwrap_or(lines.len() - 1);
        let len = end - i + 1;
        let reason = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("//") || l.starts_with("#[")
            })
            .any(|l| l.trim_start().starts_with("// Long:"));
        if len > MAX_FN_LINES && !reason {
            let name = t.split("fn ").nth(1).unwrap_or(t);
            let name = name.split(['(', '<']).next().unwrap_or(name);
            out.push((format!("{}:{} {name}", f.path.display(), i + 1), len));
        }
        i += 1;
    }
    out
}

#[test]
fn functions_are_short_or_say_why() {
    let files = load();
    let long: Vec<_> = files.iter().flat_map(long_functions).collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines without a `// Long:` reason:\n{}",
        long.iter()
            .map(|(w, n)| format!("{w}: {n} lines"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Prints the module graph (`--nocapture`), one module per line with what it imports.
#[test]
fn graph_print() {
    let files = load();
    let g = graph(&files, 1);
    let order = VOCABULARY
        .iter()
        .chain(STAGES)
        .chain(WIRING)
        .chain(SIDE)
        .copied();
    for m in order {
        let tos: Vec<&str> = g
            .get(m)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        println!("{m} ({}) -> {}", kind(m), tos.join(" "));
        let sub = graph(&files, 2);
        for (from, tos) in sub.iter().filter(|(k, _)| k.starts_with(&format!("{m}::"))) {
            let inner: Vec<&str> = tos.iter().map(String::as_str).collect();
            println!("  {from} -> {}", inner.join(" "));
        }
    }
}
