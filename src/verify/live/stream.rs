//! Reading one stream: what it accumulates across rounds, the commands each round asks, how
//! each reply is taken in, and the canonical JSON at the end.
//!
//! A stream is the one type whose read is more than "a length and windows of elements": its
//! metadata (`XINFO STREAM`), its groups (`XINFO GROUPS`), its entries (`XRANGE` windows) and
//! the groups' PELs and consumers (`XINFO STREAM FULL` on 6.0+, `XPENDING` and
//! `XINFO CONSUMERS` per group before) come from different commands in different rounds.
//! [`KeyRead`](super::key_read::KeyRead) hands everything about a stream to [`StreamAcc`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value as J};

use super::facts::ServerFacts;
use super::key_read::Req;
use super::reply::{array_of, bytes_of, cmd, flat_map, text_of, unstable, Cmd, Unstable};
use crate::rdb::json::b64;
use crate::resp::Reply;

/// The next stream id after `id` (`ms-seq`), for exclusive XRANGE starts on any version.
fn next_stream_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    if seq == u64::MAX {
        Some(format!("{}-0", ms.checked_add(1)?))
    } else {
        Some(format!("{ms}-{}", seq + 1))
    }
}

/// A stream being read.
#[derive(Debug, Default)]
pub(super) struct StreamAcc {
    pub(super) info: Option<Map<String, J>>,
    /// Groups from XINFO GROUPS: (name, pending, last-delivered-id, entries-read).
    pub(super) groups: Vec<GroupInfo>,
    pub(super) groups_known: bool,
    pub(super) entries: Vec<J>,
    /// Next XRANGE start, `None` once every entry was read.
    pub(super) next: Option<String>,
    pub(super) detail_requested: bool,
    pub(super) detail_done: bool,
}

#[derive(Debug, Default, Clone)]
pub(super) struct GroupInfo {
    name: Bytes,
    pending: u64,
    last_delivered_id: String,
    entries_read: Option<J>,
    /// From FULL or XPENDING.
    pel: Option<Vec<PelEntry>>,
    /// (name, pel ids, seen_time, active_time).
    consumers: Option<Vec<ConsumerInfo>>,
}

/// (id, consumer, delivery count, delivery time in ms: only from `XINFO STREAM FULL`).
type PelEntry = (String, Bytes, i64, Option<i64>);

#[derive(Debug, Default, Clone)]
struct ConsumerInfo {
    name: Bytes,
    pel: Option<Vec<String>>,
    seen_time_ms: Option<i64>,
    active_time_ms: Option<i64>,
}

impl StreamAcc {
    /// The commands of the next round for stream `k`.
    pub(super) fn requests(
        &mut self,
        k: &[u8],
        f: &ServerFacts,
        w: usize,
        out: &mut Vec<(Req, Cmd)>,
    ) {
        let s = self;
        if s.info.is_none() {
            out.push((Req::XinfoStream, cmd(&[b"XINFO", b"STREAM", k])));
            out.push((Req::XinfoGroups, cmd(&[b"XINFO", b"GROUPS", k])));
        }
        if let Some(start) = &s.next {
            let count = w.to_string();
            out.push((
                Req::Xrange,
                cmd(&[
                    b"XRANGE",
                    k,
                    start.as_bytes(),
                    b"+",
                    b"COUNT",
                    count.as_bytes(),
                ]),
            ));
        }
        if s.groups_known && !s.detail_done && !s.detail_requested {
            s.detail_requested = true;
            if f.has_xinfo_full() {
                // COUNT bounds the entries, the group PELs and the consumer PELs alike;
                // the largest group PEL is what must fit (COUNT 0 would mean all
                // entries).
                let most = s.groups.iter().map(|g| g.pending).max().unwrap_or(0).max(1);
                let count = most.to_string();
                out.push((
                    Req::XinfoFull,
                    cmd(&[b"XINFO", b"STREAM", k, b"FULL", b"COUNT", count.as_bytes()]),
                ));
            } else {
                for (i, g) in s.groups.iter().enumerate() {
                    let count = g.pending.max(1).to_string();
                    out.push((
                        Req::Xpending(i),
                        cmd(&[b"XPENDING", k, &g.name, b"-", b"+", count.as_bytes()]),
                    ));
                    out.push((
                        Req::XinfoConsumers(i),
                        cmd(&[b"XINFO", b"CONSUMERS", k, &g.name]),
                    ));
                }
            }
        }
    }

    /// `XINFO STREAM`: length, last id and (7.0+) the v2 metadata.
    pub(super) fn take_info(&mut self, r: &Reply, f: &ServerFacts) -> Result<(), Unstable> {
        let m = flat_map(r).ok_or_else(|| unstable("XINFO STREAM", r))?;
        let mut info = Map::new();
        let int = |name: &str| m.get(name).and_then(|v| v.as_int());
        let id = |name: &str| m.get(name).and_then(|v| text_of(v));
        info.insert(
            "length".into(),
            json!(int("length").ok_or_else(|| unstable("XINFO STREAM length", r))?),
        );
        info.insert(
            "last_id".into(),
            json!(id("last-generated-id").ok_or_else(|| unstable("XINFO STREAM", r))?),
        );
        if f.has_stream_v2() {
            if let Some(v) = id("recorded-first-entry-id") {
                info.insert("first_id".into(), json!(v));
            }
            if let Some(v) = id("max-deleted-entry-id") {
                info.insert("max_deleted_entry_id".into(), json!(v));
            }
            if let Some(v) = int("entries-added") {
                info.insert("entries_added".into(), json!(v));
            }
        }
        self.info = Some(info);
        Ok(())
    }

    /// `XINFO GROUPS`: the groups and their declared PEL sizes.
    pub(super) fn take_groups(&mut self, r: &Reply) -> Result<(), Unstable> {
        let groups = array_of(r).ok_or_else(|| unstable("XINFO GROUPS", r))?;
        self.groups.clear();
        for g in groups {
            let m = flat_map(g).ok_or_else(|| unstable("XINFO GROUPS", r))?;
            let name = m
                .get("name")
                .and_then(|v| bytes_of(v))
                .ok_or_else(|| unstable("XINFO GROUPS name", r))?;
            self.groups.push(GroupInfo {
                name,
                pending: m
                    .get("pending")
                    .and_then(|v| v.as_int())
                    .unwrap_or(0)
                    .max(0) as u64,
                last_delivered_id: m
                    .get("last-delivered-id")
                    .and_then(|v| text_of(v))
                    .unwrap_or_default(),
                entries_read: m
                    .get("entries-read")
                    .map(|v| v.as_int().map_or(J::Null, |n| json!(n))),
                pel: None,
                consumers: None,
            });
        }
        self.groups_known = true;
        if self.groups.is_empty() {
            self.detail_done = true;
        }
        Ok(())
    }

    /// One `XRANGE` window of entries; a short window is the last.
    pub(super) fn take_entries(&mut self, r: &Reply, window: usize) -> Result<(), Unstable> {
        let entries = array_of(r).ok_or_else(|| unstable("XRANGE", r))?;
        let mut last = None;
        for e in entries {
            let parts = array_of(e).ok_or_else(|| unstable("XRANGE", r))?;
            let [id, fields] = parts else {
                return Err(unstable("XRANGE", r));
            };
            let id = text_of(id).ok_or_else(|| unstable("XRANGE id", r))?;
            let fields: Vec<J> = array_of(fields)
                .ok_or_else(|| unstable("XRANGE fields", r))?
                .iter()
                .map(|v| bytes_of(v).map(|b| b64(&b)))
                .collect::<Option<_>>()
                .ok_or_else(|| unstable("XRANGE fields", r))?;
            self.entries.push(json!([id, fields]));
            last = Some(id);
        }
        self.next = if entries.len() < window.max(1) {
            None
        } else {
            last.as_deref().and_then(next_stream_id)
        };
        Ok(())
    }

    /// `XINFO STREAM FULL` (6.0+): every group with its PEL and consumers, in one reply.
    pub(super) fn take_full(&mut self, r: &Reply) -> Result<(), Unstable> {
        let m = flat_map(r).ok_or_else(|| unstable("XINFO STREAM FULL", r))?;
        let groups = m
            .get("groups")
            .and_then(|g| array_of(g))
            .ok_or_else(|| unstable("XINFO STREAM FULL groups", r))?;
        let mut full = Vec::new();
        for g in groups {
            full.push(parse_full_group(g).ok_or_else(|| unstable("XINFO FULL", r))?);
        }
        full.sort_by(|a, b| a.name.cmp(&b.name));
        // The PELs must be complete (a PEL that grew since XINFO GROUPS is cut by COUNT).
        for g in &full {
            let (pel, declared) = (g.pel.as_ref().map_or(0, Vec::len), g.pending);
            if pel as u64 != declared {
                return Err(Unstable(format!(
                    "group PEL changed while read ({pel} of {declared})"
                )));
            }
        }
        self.groups = full;
        self.detail_done = true;
        Ok(())
    }

    /// `XPENDING` of group `i` (before 6.0).
    pub(super) fn take_pending(&mut self, i: usize, r: &Reply) -> Result<(), Unstable> {
        let items = array_of(r).ok_or_else(|| unstable("XPENDING", r))?;
        let mut pel = Vec::new();
        for it in items {
            match array_of(it) {
                Some([id, consumer, _idle, count]) => pel.push((
                    text_of(id).ok_or_else(|| unstable("XPENDING", r))?,
                    bytes_of(consumer).ok_or_else(|| unstable("XPENDING", r))?,
                    count.as_int().ok_or_else(|| unstable("XPENDING", r))?,
                    None,
                )),
                _ => return Err(unstable("XPENDING", r)),
            }
        }
        let g = self
            .groups
            .get_mut(i)
            .ok_or_else(|| Unstable("groups changed".into()))?;
        if pel.len() as u64 != g.pending {
            return Err(Unstable("group PEL changed while read".into()));
        }
        g.pel = Some(pel);
        self.check_pre6_detail_done();
        Ok(())
    }

    /// `XINFO CONSUMERS` of group `i` (before 6.0).
    pub(super) fn take_consumers(&mut self, i: usize, r: &Reply) -> Result<(), Unstable> {
        let items = array_of(r).ok_or_else(|| unstable("XINFO CONSUMERS", r))?;
        let mut cons = Vec::new();
        for c in items {
            let m = flat_map(c).ok_or_else(|| unstable("XINFO CONSUMERS", r))?;
            cons.push(ConsumerInfo {
                name: m
                    .get("name")
                    .and_then(|v| bytes_of(v))
                    .ok_or_else(|| unstable("XINFO CONSUMERS", r))?,
                pel: None,
                seen_time_ms: None,
                active_time_ms: None,
            });
        }
        let g = self
            .groups
            .get_mut(i)
            .ok_or_else(|| Unstable("groups changed".into()))?;
        g.consumers = Some(cons);
        self.check_pre6_detail_done();
        Ok(())
    }

    /// Before 6.0: once every group has its PEL and consumers, split each PEL by consumer.
    fn check_pre6_detail_done(&mut self) {
        if self
            .groups
            .iter()
            .all(|g| g.pel.is_some() && g.consumers.is_some())
        {
            // Consumer PELs are the group PEL split by consumer (ID order is kept).
            for g in &mut self.groups {
                let pel = g.pel.clone().unwrap_or_default();
                if let Some(cons) = g.consumers.as_mut() {
                    for c in cons {
                        c.pel = Some(
                            pel.iter()
                                .filter(|p| p.1 == c.name)
                                .map(|p| p.0.clone())
                                .collect(),
                        );
                    }
                }
            }
            self.detail_done = true;
        }
    }
}

/// One group of `XINFO STREAM key FULL`.
fn parse_full_group(g: &Reply) -> Option<GroupInfo> {
    let m = flat_map(g)?;
    let name = bytes_of(m.get("name")?)?;
    let mut pel = Vec::new();
    for p in array_of(m.get("pending")?)? {
        let [id, consumer, time, count] = array_of(p)? else {
            return None;
        };
        pel.push((
            text_of(id)?,
            bytes_of(consumer)?,
            count.as_int()?,
            time.as_int(),
        ));
    }
    let mut consumers = Vec::new();
    for c in array_of(m.get("consumers")?)? {
        let cm = flat_map(c)?;
        let mut ids = Vec::new();
        for p in array_of(cm.get("pending")?)? {
            ids.push(text_of(array_of(p)?.first()?)?);
        }
        consumers.push(ConsumerInfo {
            name: bytes_of(cm.get("name")?)?,
            pel: Some(ids),
            seen_time_ms: cm.get("seen-time").and_then(|v| v.as_int()),
            active_time_ms: cm.get("active-time").and_then(|v| v.as_int()),
        });
    }
    Some(GroupInfo {
        name,
        pending: m.get("pel-count").and_then(|v| v.as_int()).unwrap_or(0) as u64,
        last_delivered_id: text_of(m.get("last-delivered-id")?)?,
        entries_read: m
            .get("entries-read")
            .map(|v| v.as_int().map_or(J::Null, |n| json!(n))),
        pel: Some(pel),
        consumers: Some(consumers),
    })
}

/// The canonical JSON of a stream that was read completely.
pub(super) fn stream_json(s: StreamAcc, f: &ServerFacts) -> J {
    let mut o = s.info.unwrap_or_default();
    o.insert("entries".into(), J::Array(s.entries));
    let mut groups = s.groups;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let groups: Vec<J> = groups.into_iter().map(|g| group_json(g, f)).collect();
    o.insert("groups".into(), J::Array(groups));
    J::Object(o)
}

/// The canonical JSON of one group: PEL, consumers and (6.0+) their times.
fn group_json(g: GroupInfo, f: &ServerFacts) -> J {
    let mut go = Map::new();
    go.insert("name".into(), b64(&g.name));
    go.insert("last_delivered_id".into(), json!(g.last_delivered_id));
    if f.has_stream_v2() {
        go.insert("entries_read".into(), g.entries_read.unwrap_or(J::Null));
    }
    let pel = g.pel.unwrap_or_default();
    go.insert(
        "pel".into(),
        J::Array(
            pel.iter()
                .map(|(id, c, n, _)| json!([id, b64(c), n]))
                .collect(),
        ),
    );
    let mut cons = g.consumers.unwrap_or_default();
    cons.sort_by(|a, b| a.name.cmp(&b.name));
    go.insert(
        "consumers".into(),
        J::Array(
            cons.iter()
                .map(|c| {
                    let ids = c.pel.clone().unwrap_or_default();
                    json!({"name": b64(&c.name), "pending": ids.len(), "pel": ids})
                })
                .collect(),
        ),
    );
    if f.has_xinfo_full() {
        let pdt: Map<String, J> = pel
            .iter()
            .map(|(id, _, _, t)| (id.clone(), json!(t.unwrap_or(0))))
            .collect();
        let ct: Map<String, J> = cons
            .iter()
            .map(|c| {
                let mut t = Map::new();
                t.insert("seen_time_ms".into(), json!(c.seen_time_ms.unwrap_or(0)));
                if let Some(a) = c.active_time_ms {
                    t.insert("active_time_ms".into(), json!(a));
                }
                (B64.encode(&c.name), J::Object(t))
            })
            .collect();
        go.insert(
            "times".into(),
            json!({"pel_delivery_time_ms": pdt, "consumers": ct}),
        );
    }
    J::Object(go)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_successor() {
        assert_eq!(next_stream_id("5-1").as_deref(), Some("5-2"));
        assert_eq!(
            next_stream_id(&format!("5-{}", u64::MAX)).as_deref(),
            Some("6-0")
        );
        assert_eq!(next_stream_id("x"), None);
    }
}
