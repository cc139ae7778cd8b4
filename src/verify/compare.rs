//! Comparing canonical content (corpus README section 2) by logical value, key by key.
//!
//! The two sides may come from different Redis versions (a 5.0 master and a 7.4 target, an
//! RDB and a live server), so the comparison is about what both sides can express:
//! `encoding` is ignored (it depends on how a value was built and on the version), zset scores
//! are compared as `f64`, and version-dependent stream metadata (`first_id`,
//! `max_deleted_entry_id`, `entries_added`, `entries_read`, `times`, `active_time_ms`) is
//! compared only when both sides have it. Hash field TTLs are the exception: a side without
//! `field_expire_ms` (a server older than 7.4) cannot hold them, and losing them is a real
//! difference, reported under its own kind so that callers can decide.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{Map, Value as J};

use super::live::escape_key;

/// How to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Accepted difference between expire times (key and hash field TTLs), in ms.
    pub ttl_tolerance_ms: i64,
    /// Ignore stream consumer/PEL `times` (a replica applying XREADGROUP sees other times).
    pub ignore_stream_times: bool,
    /// How many differences are kept with details (all are counted).
    pub max_differences: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            ttl_tolerance_ms: 0,
            ignore_stream_times: false,
            max_differences: 50,
        }
    }
}

/// What is different about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiffKind {
    /// On the left (source) only.
    Missing,
    /// On the right (target) only.
    Extra,
    /// Different types.
    Type,
    /// Same type, different value.
    Value,
    /// Different key expire time.
    Ttl,
    /// Different hash field expire times.
    FieldTtl,
    /// Could not be read consistently (kept changing).
    Unreadable,
    /// Function libraries differ.
    Functions,
}

impl DiffKind {
    pub const ALL: [DiffKind; 8] = [
        DiffKind::Missing,
        DiffKind::Extra,
        DiffKind::Type,
        DiffKind::Value,
        DiffKind::Ttl,
        DiffKind::FieldTtl,
        DiffKind::Unreadable,
        DiffKind::Functions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Type => "type",
            DiffKind::Value => "value",
            DiffKind::Ttl => "ttl",
            DiffKind::FieldTtl => "field-ttl",
            DiffKind::Unreadable => "unreadable",
            DiffKind::Functions => "functions",
        }
    }
}

impl fmt::Display for DiffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One difference, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `None` for server-wide things (functions).
    pub db: Option<u32>,
    /// The key, escaped (`"a\x00b"`).
    pub key: String,
    pub kind: DiffKind,
    pub detail: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.db {
            Some(db) => write!(f, "db {db} {} {}: {}", self.key, self.kind, self.detail),
            None => write!(f, "{} {}: {}", self.key, self.kind, self.detail),
        }
    }
}

/// Key counts of one database on both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbCounts {
    pub left_keys: u64,
    pub right_keys: u64,
    /// Keys compared (present on at least one side and looked at).
    pub compared: u64,
    /// Keys with at least one difference.
    pub differing: u64,
}

/// The result of a comparison.
#[derive(Debug, Clone, Default)]
pub struct CompareReport {
    pub left_name: String,
    pub right_name: String,
    pub dbs: BTreeMap<u32, DbCounts>,
    /// Keys per difference kind (a key with a value and a TTL difference counts in both).
    pub counts: BTreeMap<DiffKind, u64>,
    /// The first `max_differences` differences.
    pub differences: Vec<Difference>,
    /// Extra lines for the summary (sampling, re-checks).
    pub notes: Vec<String>,
    max_differences: usize,
}

impl CompareReport {
    pub fn new(left: impl Into<String>, right: impl Into<String>, opts: &CompareOptions) -> Self {
        CompareReport {
            left_name: left.into(),
            right_name: right.into(),
            max_differences: opts.max_differences,
            ..Default::default()
        }
    }

    /// No difference of any kind.
    pub fn is_equal(&self) -> bool {
        self.counts.values().all(|&n| n == 0)
    }

    /// Total keys with a difference.
    pub fn differing_keys(&self) -> u64 {
        self.dbs.values().map(|d| d.differing).sum()
    }

    pub fn count(&self, kind: DiffKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// The kinds that occurred.
    pub fn kinds(&self) -> BTreeSet<DiffKind> {
        self.counts
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(&k, _)| k)
            .collect()
    }

    pub fn db_mut(&mut self, db: u32) -> &mut DbCounts {
        self.dbs.entry(db).or_default()
    }

    /// Record one difference (counted always, kept while there is room).
    pub fn push(&mut self, diff: Difference) {
        *self.counts.entry(diff.kind).or_default() += 1;
        if self.differences.len() < self.max_differences {
            self.differences.push(diff);
        }
    }

    /// Compare one key seen on either side and record what differs. Returns whether the key
    /// was equal. Does not touch the key counts.
    pub fn record_key(
        &mut self,
        db: u32,
        key: &[u8],
        left: Option<&J>,
        right: Option<&J>,
        opts: &CompareOptions,
    ) -> bool {
        let diffs = compare_entry(left, right, opts);
        let c = self.db_mut(db);
        c.compared += 1;
        if diffs.is_empty() {
            return true;
        }
        c.differing += 1;
        let key = escape_key(key);
        for (kind, detail) in diffs {
            self.push(Difference {
                db: Some(db),
                key: key.clone(),
                kind,
                detail,
            });
        }
        false
    }

    /// Record a key that could not be read consistently.
    pub fn record_unreadable(&mut self, db: u32, key: &[u8], why: &str) {
        self.db_mut(db).differing += 1;
        self.push(Difference {
            db: Some(db),
            key: escape_key(key),
            kind: DiffKind::Unreadable,
            detail: why.to_string(),
        });
    }

    /// Compare the `functions` of two documents (`null` and `[]` both mean none).
    pub fn record_functions(&mut self, left: &J, right: &J) {
        if let Some(detail) = compare_functions(left, right) {
            self.push(Difference {
                db: None,
                key: "(functions)".into(),
                kind: DiffKind::Functions,
                detail,
            });
        }
    }
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = [
            DiffKind::Missing,
            DiffKind::Extra,
            DiffKind::Type,
            DiffKind::Value,
            DiffKind::Ttl,
            DiffKind::FieldTtl,
            DiffKind::Unreadable,
        ];
        writeln!(f, "left:  {}", self.left_name)?;
        writeln!(f, "right: {}", self.right_name)?;
        write!(
            f,
            "{:>5} {:>12} {:>12} {:>10}",
            "db", "left keys", "right keys", "differing"
        )?;
        for k in kinds {
            write!(f, " {:>10}", k.name())?;
        }
        writeln!(f)?;
        // Per-db kind counts are derived from the kept differences only when all were kept;
        // the totals line always has the exact counts.
        let mut total = DbCounts::default();
        for (db, c) in &self.dbs {
            write!(
                f,
                "{:>5} {:>12} {:>12} {:>10}",
                db, c.left_keys, c.right_keys, c.differing
            )?;
            for k in kinds {
                let n = self
                    .differences
                    .iter()
                    .filter(|d| d.db == Some(*db) && d.kind == k)
                    .count();
                let all_kept = self.differences.len() as u64 == self.counts.values().sum::<u64>();
                if all_kept {
                    write!(f, " {n:>10}")?;
                } else {
                    write!(f, " {:>10}", "-")?;
                }
            }
            writeln!(f)?;
            total.left_keys += c.left_keys;
            total.right_keys += c.right_keys;
            total.differing += c.differing;
        }
        write!(
            f,
            "{:>5} {:>12} {:>12} {:>10}",
            "all", total.left_keys, total.right_keys, total.differing
        )?;
        for k in kinds {
            write!(f, " {:>10}", self.count(k))?;
        }
        writeln!(f)?;
        if self.count(DiffKind::Functions) > 0 {
            writeln!(f, "function libraries differ")?;
        }
        for n in &self.notes {
            writeln!(f, "{n}")?;
        }
        if self.is_equal() {
            writeln!(f, "no differences")?;
        } else {
            let total: u64 = self.counts.values().sum();
            writeln!(
                f,
                "{total} differences in {} keys (first {} shown):",
                self.differing_keys(),
                self.differences.len()
            )?;
            for d in &self.differences {
                writeln!(f, "  {d}")?;
            }
        }
        Ok(())
    }
}

/// Compare two whole canonical documents (every database, then the functions).
pub fn compare_documents(left: &J, right: &J, opts: &CompareOptions) -> CompareReport {
    compare_documents_named(left, right, "left", "right", opts)
}

/// [`compare_documents`] with names for the two sides in the report.
pub fn compare_documents_named(
    left: &J,
    right: &J,
    left_name: &str,
    right_name: &str,
    opts: &CompareOptions,
) -> CompareReport {
    let mut report = CompareReport::new(left_name, right_name, opts);
    let l = keys_by_db(left);
    let r = keys_by_db(right);
    let dbs: BTreeSet<u32> = l.keys().chain(r.keys()).copied().collect();
    let empty = BTreeMap::new();
    for db in dbs {
        let lk = l.get(&db).unwrap_or(&empty);
        let rk = r.get(&db).unwrap_or(&empty);
        {
            let c = report.db_mut(db);
            c.left_keys = lk.len() as u64;
            c.right_keys = rk.len() as u64;
        }
        let names: BTreeSet<&Vec<u8>> = lk.keys().chain(rk.keys()).collect();
        for key in names {
            report.record_key(db, key, lk.get(key).copied(), rk.get(key).copied(), opts);
        }
    }
    report.record_functions(&left["functions"], &right["functions"]);
    report
}

/// db -> raw key -> entry.
fn keys_by_db(doc: &J) -> BTreeMap<u32, BTreeMap<Vec<u8>, &J>> {
    let mut out = BTreeMap::new();
    if let Some(dbs) = doc["databases"].as_object() {
        for (db, v) in dbs {
            let Ok(db) = db.parse::<u32>() else { continue };
            let m: &mut BTreeMap<Vec<u8>, &J> = out.entry(db).or_default();
            for e in v["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let key = e["key"]
                    .as_str()
                    .and_then(|k| B64.decode(k).ok())
                    .unwrap_or_default();
                m.insert(key, e);
            }
        }
    }
    out
}

/// Every difference between two entries of the same key (empty when equal).
pub fn compare_entry(
    left: Option<&J>,
    right: Option<&J>,
    opts: &CompareOptions,
) -> Vec<(DiffKind, String)> {
    let (l, r) = match (left, right) {
        (None, None) => return Vec::new(),
        (Some(l), None) => {
            return vec![(DiffKind::Missing, format!("{} only on the left", l["type"]))]
        }
        (None, Some(r)) => {
            return vec![(DiffKind::Extra, format!("{} only on the right", r["type"]))]
        }
        (Some(l), Some(r)) => (l, r),
    };
    let mut out = Vec::new();
    if l["type"] != r["type"] {
        out.push((DiffKind::Type, format!("{} vs {}", l["type"], r["type"])));
        return out;
    }
    let ty = l["type"].as_str().unwrap_or("");
    if let Some(d) = compare_value(ty, &l["value"], &r["value"], opts) {
        out.push((DiffKind::Value, format!("{ty}: {d}")));
    }
    if let Some(d) = compare_ttl(&l["expire_ms"], &r["expire_ms"], opts.ttl_tolerance_ms) {
        out.push((DiffKind::Ttl, d));
    }
    if ty == "hash" {
        if let Some(d) = compare_field_ttl(l.get("field_expire_ms"), r.get("field_expire_ms"), opts)
        {
            out.push((DiffKind::FieldTtl, d));
        }
    }
    out
}

fn compare_ttl(l: &J, r: &J, tolerance: i64) -> Option<String> {
    match (l.as_i64(), r.as_i64()) {
        (None, None) => None,
        (Some(a), None) => Some(format!("expires at {a} vs no expire")),
        (None, Some(b)) => Some(format!("no expire vs expires at {b}")),
        (Some(a), Some(b)) if (a - b).abs() > tolerance => {
            Some(format!("expires at {a} vs {b} ({:+} ms)", b - a))
        }
        _ => None,
    }
}

fn compare_field_ttl(l: Option<&J>, r: Option<&J>, opts: &CompareOptions) -> Option<String> {
    let empty = Map::new();
    let lm = l.and_then(J::as_object).unwrap_or(&empty);
    let rm = r.and_then(J::as_object).unwrap_or(&empty);
    if l.is_none() && !rm.is_empty() {
        return Some(format!("{} field TTLs only on the right", rm.len()));
    }
    if r.is_none() && !lm.is_empty() {
        return Some(format!(
            "{} field TTLs on the left; the right has none (a server before 7.4 cannot hold them)",
            lm.len()
        ));
    }
    let mut bad = 0;
    let mut first = None;
    let fields: BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
    for f in fields {
        let d = compare_ttl(
            lm.get(f).unwrap_or(&J::Null),
            rm.get(f).unwrap_or(&J::Null),
            opts.ttl_tolerance_ms,
        );
        if let Some(d) = d {
            bad += 1;
            if first.is_none() {
                first = Some(format!("field {}: {d}", b64_escaped(f)));
            }
        }
    }
    first.map(|f| format!("{bad} fields differ; {f}"))
}

fn b64_escaped(s: &str) -> String {
    B64.decode(s)
        .map(|b| escape_key(&b))
        .unwrap_or_else(|_| s.to_string())
}

fn compare_value(ty: &str, l: &J, r: &J, opts: &CompareOptions) -> Option<String> {
    match ty {
        "string" => compare_strings(l, r),
        "list" => compare_arrays(l, r, "element"),
        "set" => {
            let ls = string_set(l);
            let rs = string_set(r);
            (ls != rs).then(|| {
                format!(
                    "{} vs {} members, {} only left, {} only right",
                    ls.len(),
                    rs.len(),
                    ls.difference(&rs).count(),
                    rs.difference(&ls).count()
                )
            })
        }
        "zset" => compare_zsets(l, r),
        "hash" => compare_hashes(l, r),
        "stream" => compare_streams(l, r, opts),
        _ => (l != r).then(|| "serialized values differ".to_string()),
    }
}

fn compare_strings(l: &J, r: &J) -> Option<String> {
    if l == r {
        return None;
    }
    let a = l
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default();
    let b = r
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default();
    let at = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    Some(format!(
        "{} vs {} bytes, first difference at byte {at}",
        a.len(),
        b.len()
    ))
}

fn compare_arrays(l: &J, r: &J, what: &str) -> Option<String> {
    if l == r {
        return None;
    }
    let empty = Vec::new();
    let a = l.as_array().unwrap_or(&empty);
    let b = r.as_array().unwrap_or(&empty);
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    Some(format!(
        "{} vs {} {what}s, first difference at index {at}",
        a.len(),
        b.len()
    ))
}

fn string_set(v: &J) -> BTreeSet<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(J::as_str).collect())
        .unwrap_or_default()
}

/// A score from the canonical form: a number, or `"inf"`/`"-inf"`/`"nan"`.
pub fn score_of(v: &J) -> Option<f64> {
    match v {
        J::Number(n) => n.as_f64(),
        J::String(s) => match s.as_str() {
            "inf" | "+inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

fn zset_map(v: &J) -> BTreeMap<&str, Option<f64>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_str()?, p.get(1).and_then(score_of))))
                .collect()
        })
        .unwrap_or_default()
}

fn compare_zsets(l: &J, r: &J) -> Option<String> {
    let a = zset_map(l);
    let b = zset_map(r);
    let same = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
        (x, y) => x.is_none() && y.is_none(),
    };
    let only_l = a.keys().filter(|k| !b.contains_key(*k)).count();
    let only_r = b.keys().filter(|k| !a.contains_key(*k)).count();
    let mut score_diff = 0;
    let mut first = None;
    for (m, s) in &a {
        if let Some(t) = b.get(m) {
            if !same(*s, *t) {
                score_diff += 1;
                if first.is_none() {
                    first = Some(format!(
                        "; member {}: score {:?} vs {:?}",
                        b64_escaped(m),
                        s.unwrap_or(f64::NAN),
                        t.unwrap_or(f64::NAN)
                    ));
                }
            }
        }
    }
    (only_l + only_r + score_diff > 0).then(|| {
        format!(
            "{} vs {} members, {only_l} only left, {only_r} only right, {score_diff} scores differ{}",
            a.len(),
            b.len(),
            first.unwrap_or_default()
        )
    })
}

fn compare_hashes(l: &J, r: &J) -> Option<String> {
    let empty = Map::new();
    let a = l.as_object().unwrap_or(&empty);
    let b = r.as_object().unwrap_or(&empty);
    if a == b {
        return None;
    }
    let only_l = a.keys().filter(|k| !b.contains_key(*k)).count();
    let only_r = b.keys().filter(|k| !a.contains_key(*k)).count();
    let changed: Vec<&String> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    let first = changed
        .first()
        .map(|f| format!(", e.g. field {}", b64_escaped(f)))
        .unwrap_or_default();
    Some(format!(
        "{} vs {} fields, {only_l} only left, {only_r} only right, {} values differ{first}",
        a.len(),
        b.len(),
        changed.len()
    ))
}

/// A field both sides have, compared; a field only one side has is version-dependent metadata.
fn both<'a>(l: &'a J, r: &'a J, field: &str) -> Option<(&'a J, &'a J)> {
    Some((l.get(field)?, r.get(field)?))
}

fn compare_streams(l: &J, r: &J, opts: &CompareOptions) -> Option<String> {
    if let Some(d) = compare_arrays(&l["entries"], &r["entries"], "entrie") {
        return Some(format!("entries: {d}"));
    }
    for f in [
        "length",
        "last_id",
        "first_id",
        "max_deleted_entry_id",
        "entries_added",
    ] {
        if let Some((a, b)) = both(l, r, f) {
            if a != b {
                return Some(format!("{f}: {a} vs {b}"));
            }
        }
    }
    compare_groups(l, r, opts)
}

/// The consumer groups of two streams: the same names, then each pair of the same name.
fn compare_groups(l: &J, r: &J, opts: &CompareOptions) -> Option<String> {
    let empty = Vec::new();
    let lg = l["groups"].as_array().unwrap_or(&empty);
    let rg = r["groups"].as_array().unwrap_or(&empty);
    let by_name = |g: &'_ [J]| -> BTreeMap<String, J> {
        g.iter()
            .map(|g| (g["name"].as_str().unwrap_or("").to_string(), g.clone()))
            .collect()
    };
    let (lg, rg) = (by_name(lg), by_name(rg));
    if lg.keys().ne(rg.keys()) {
        let names = |m: &BTreeMap<String, J>| {
            m.keys()
                .map(|k| b64_escaped(k))
                .collect::<Vec<_>>()
                .join(",")
        };
        return Some(format!("groups [{}] vs [{}]", names(&lg), names(&rg)));
    }
    for (name, a) in &lg {
        if let Some(d) = compare_group(&b64_escaped(name), a, &rg[name], opts) {
            return Some(d);
        }
    }
    None
}

/// Two consumer groups of the same name (`gname`, as messages show it).
fn compare_group(gname: &str, a: &J, b: &J, opts: &CompareOptions) -> Option<String> {
    for f in ["last_delivered_id", "entries_read"] {
        if let Some((x, y)) = both(a, b, f) {
            if x != y {
                return Some(format!("group {gname} {f}: {x} vs {y}"));
            }
        }
    }
    if a["pel"] != b["pel"] {
        return Some(format!(
            "group {gname} PEL: {}",
            compare_arrays(&a["pel"], &b["pel"], "entrie").unwrap_or_default()
        ));
    }
    if a["consumers"] != b["consumers"] {
        return Some(format!(
            "group {gname} consumers: {} vs {}",
            a["consumers"], b["consumers"]
        ));
    }
    if opts.ignore_stream_times {
        return None;
    }
    let (ta, tb) = both(a, b, "times")?;
    compare_group_times(gname, ta, tb)
}

/// The times of two consumer groups of the same name: PEL delivery times, then the seen and
/// active times of the consumers both sides have.
fn compare_group_times(gname: &str, ta: &J, tb: &J) -> Option<String> {
    if ta["pel_delivery_time_ms"] != tb["pel_delivery_time_ms"] {
        return Some(format!(
            "group {gname} PEL delivery times: {} vs {}",
            ta["pel_delivery_time_ms"], tb["pel_delivery_time_ms"]
        ));
    }
    let ec = Map::new();
    let ca = ta["consumers"].as_object().unwrap_or(&ec);
    let cb = tb["consumers"].as_object().unwrap_or(&ec);
    for (c, x) in ca {
        let Some(y) = cb.get(c) else { continue };
        for f in ["seen_time_ms", "active_time_ms"] {
            if let Some((p, q)) = both(x, y, f) {
                if p != q {
                    return Some(format!(
                        "group {gname} consumer {} {f}: {p} vs {q}",
                        b64_escaped(c)
                    ));
                }
            }
        }
    }
    None
}

fn compare_functions(l: &J, r: &J) -> Option<String> {
    let libs = |v: &J| -> BTreeMap<String, J> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|lib| {
                        (
                            lib["library_name"].as_str().unwrap_or("").to_string(),
                            lib.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (libs(l), libs(r));
    if a == b {
        return None;
    }
    let names = |m: &BTreeMap<String, J>| m.keys().cloned().collect::<Vec<_>>().join(",");
    if a.keys().ne(b.keys()) {
        return Some(format!("libraries [{}] vs [{}]", names(&a), names(&b)));
    }
    let differing: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    Some(format!(
        "libraries with different code or functions: {}",
        differing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(keys: J) -> J {
        json!({"databases": {"0": {"key_count": 1, "keys": keys}}, "functions": null})
    }

    #[test]
    fn encoding_ignored_scores_as_f64() {
        let a = doc(
            json!([{"key": "YQ==", "type": "zset", "encoding": "listpack", "expire_ms": null,
            "value": [["bQ==", 1.0], ["bg==", "inf"]]}]),
        );
        let b = doc(
            json!([{"key": "YQ==", "type": "zset", "encoding": "skiplist", "expire_ms": null,
            "value": [["bQ==", 1], ["bg==", "inf"]]}]),
        );
        let r = compare_documents(&a, &b, &CompareOptions::default());
        assert!(r.is_equal(), "{r}");
        let c = doc(
            json!([{"key": "YQ==", "type": "zset", "encoding": "skiplist", "expire_ms": null,
            "value": [["bQ==", 1.5], ["bg==", "inf"]]}]),
        );
        let r = compare_documents(&a, &c, &CompareOptions::default());
        assert_eq!(r.count(DiffKind::Value), 1, "{r}");
    }

    #[test]
    fn kinds_and_tolerance() {
        let a = doc(json!([
            {"key": "YQ==", "type": "string", "encoding": "raw", "expire_ms": 1000, "value": "eA=="},
            {"key": "Yg==", "type": "string", "encoding": "raw", "expire_ms": null, "value": "eA=="},
            {"key": "Yw==", "type": "list", "encoding": "raw", "expire_ms": null, "value": ["eA=="]},
        ]));
        let b = doc(json!([
            {"key": "YQ==", "type": "string", "encoding": "embstr", "expire_ms": 1400, "value": "eA=="},
            {"key": "Yw==", "type": "set", "encoding": "raw", "expire_ms": null, "value": ["eA=="]},
            {"key": "ZA==", "type": "string", "encoding": "raw", "expire_ms": null, "value": "eA=="},
        ]));
        let mut o = CompareOptions::default();
        let r = compare_documents(&a, &b, &o);
        assert_eq!(r.count(DiffKind::Ttl), 1);
        assert_eq!(r.count(DiffKind::Missing), 1);
        assert_eq!(r.count(DiffKind::Extra), 1);
        assert_eq!(r.count(DiffKind::Type), 1);
        assert_eq!(r.differing_keys(), 4);
        assert_eq!(r.dbs[&0].left_keys, 3);
        let text = r.to_string();
        assert!(text.contains("db 0 \"b\" missing"), "{text}");
        o.ttl_tolerance_ms = 500;
        assert_eq!(compare_documents(&a, &b, &o).count(DiffKind::Ttl), 0);
    }

    #[test]
    fn stream_metadata_only_when_both_have_it() {
        let a = doc(
            json!([{"key": "cw==", "type": "stream", "expire_ms": null, "value": {
            "entries": [], "length": 0, "last_id": "1-1", "first_id": "0-0", "groups": [
              {"name": "Zw==", "last_delivered_id": "0-0", "entries_read": null, "pel": [], "consumers": [],
               "times": {"pel_delivery_time_ms": {}, "consumers": {"Yw==": {"seen_time_ms": 5}}}}]}}]),
        );
        let b = doc(
            json!([{"key": "cw==", "type": "stream", "expire_ms": null, "value": {
            "entries": [], "length": 0, "last_id": "1-1", "groups": [
              {"name": "Zw==", "last_delivered_id": "0-0", "pel": [], "consumers": [],
               "times": {"pel_delivery_time_ms": {}, "consumers": {"Yw==": {"seen_time_ms": 6}}}}]}}]),
        );
        let mut o = CompareOptions::default();
        let r = compare_documents(&a, &b, &o);
        assert_eq!(r.count(DiffKind::Value), 1, "{r}");
        assert!(r.differences[0].detail.contains("seen_time_ms"), "{r}");
        o.ignore_stream_times = true;
        assert!(compare_documents(&a, &b, &o).is_equal());
    }

    #[test]
    fn field_ttl_lost_is_its_own_kind() {
        let a = doc(json!([{"key": "aA==", "type": "hash", "expire_ms": null,
            "value": {"Zg==": "dg=="}, "field_expire_ms": {"Zg==": 5}}]));
        let b = doc(json!([{"key": "aA==", "type": "hash", "expire_ms": null,
            "value": {"Zg==": "dg=="}}]));
        let r = compare_documents(&a, &b, &CompareOptions::default());
        assert_eq!(r.kinds(), BTreeSet::from([DiffKind::FieldTtl]), "{r}");
        // An empty map on one side and none on the other is no difference.
        let c = doc(json!([{"key": "aA==", "type": "hash", "expire_ms": null,
            "value": {"Zg==": "dg=="}, "field_expire_ms": {}}]));
        assert!(compare_documents(&c, &b, &CompareOptions::default()).is_equal());
    }

    #[test]
    fn functions_null_equals_empty() {
        let a = json!({"databases": {}, "functions": null});
        let b = json!({"databases": {}, "functions": []});
        assert!(compare_documents(&a, &b, &CompareOptions::default()).is_equal());
        let c = json!({"databases": {}, "functions": [{"library_name": "x", "code": ""}]});
        let r = compare_documents(&a, &c, &CompareOptions::default());
        assert_eq!(r.count(DiffKind::Functions), 1);
    }
}
