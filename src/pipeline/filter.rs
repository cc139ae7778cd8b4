//! What is copied: databases (`--db`), where they go (`--db-map`), and keys (prefix and regex,
//! include and exclude). One [`KeyFilter`] is shared by the snapshot and the stream apply, so
//! both copy exactly the same keys.
//!
//! A key is copied when its database is selected, it matches no exclude rule, and (when there
//! are include rules) it matches at least one include rule (prefix or regex).
//!
//! Commands whose keys a filter splits (some copied, some not) are handled by
//! [`KeyFilter::split_command`]: commands that act on each key on its own (`DEL`, `UNLINK`,
//! `TOUCH`, `MSET`) are rewritten with the copied keys only; any other command is forwarded
//! whole when at least one of its keys is copied (so `RENAME copied other` moves the key on the
//! target as on the source) and dropped when none is.

use std::collections::BTreeMap;

use bytes::Bytes;

/// A `--db-map` entry that is not `SRC:DST`; the message quotes the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbMapError {
    #[error("{entry:?}: expected SOURCE_DB:TARGET_DB, like 1:0")]
    NoColon { entry: String },
    #[error("{entry:?}: {part:?} is not a database number")]
    NotADatabase { entry: String, part: String },
}

/// Parse `SRC:DST` (`1:0`).
pub fn parse_db_map_entry(s: &str) -> Result<(u32, u32), DbMapError> {
    let (a, b) = s.split_once(':').ok_or_else(|| DbMapError::NoColon {
        entry: s.to_string(),
    })?;
    let p = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|_| DbMapError::NotADatabase {
                entry: s.to_string(),
                part: x.to_string(),
            })
    };
    Ok((p(a)?, p(b)?))
}

/// Databases and keys to copy; the default copies everything, unchanged.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Source databases to copy (`None`: all).
    pub dbs: Option<Vec<u32>>,
    /// Source database to target database; unlisted databases keep their number.
    pub db_map: BTreeMap<u32, u32>,
    pub include_prefixes: Vec<Bytes>,
    pub exclude_prefixes: Vec<Bytes>,
    pub include_regex: Vec<regex::bytes::Regex>,
    pub exclude_regex: Vec<regex::bytes::Regex>,
}

/// What to do with a command after the key filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Forward as it is.
    Keep,
    /// Forward these arguments instead (some keys removed).
    Rewrite(Vec<Bytes>),
    /// Do not forward.
    Drop,
}

/// A filter option that cannot be used; the message names the option.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("--db-map {0}")]
    DbMap(#[from] DbMapError),
    #[error("--db-map: database {db} is mapped twice ({prev} and {now})")]
    MappedTwice { db: u32, prev: u32, now: u32 },
    #[error("--{flag} {regex:?}: {cause}")]
    Regex {
        flag: &'static str,
        regex: String,
        cause: Box<regex::Error>,
    },
}

impl KeyFilter {
    /// Build from the command-line forms; errors name the option.
    /// Target databases that receive several copied source databases (by `--db-map`), with
    /// those source databases: a flush of one of them may only delete what none of the
    /// others holds.
    pub fn merged(&self) -> Vec<(u32, Vec<u32>)> {
        let mut by_target: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for db in self.dbs.clone().unwrap_or_else(|| (0..16).collect()) {
            if let Some(t) = self.map_db(db) {
                by_target.entry(t).or_default().push(db);
            }
        }
        by_target
            .into_iter()
            .filter(|(_, dbs)| dbs.len() > 1)
            .collect()
    }

    pub fn from_options(
        dbs: Option<Vec<u32>>,
        db_map: &[String],
        include_prefix: &[String],
        exclude_prefix: &[String],
        include_regex: &[String],
        exclude_regex: &[String],
    ) -> Result<KeyFilter, FilterError> {
        let mut map = BTreeMap::new();
        for m in db_map {
            let (a, b) = parse_db_map_entry(m)?;
            if let Some(prev) = map.insert(a, b) {
                return Err(FilterError::MappedTwice {
                    db: a,
                    prev,
                    now: b,
                });
            }
        }
        let re = |flag: &'static str,
                  list: &[String]|
         -> Result<Vec<regex::bytes::Regex>, FilterError> {
            list.iter()
                .map(|r| {
                    regex::bytes::Regex::new(r).map_err(|cause| FilterError::Regex {
                        flag,
                        regex: r.clone(),
                        cause: Box::new(cause),
                    })
                })
                .collect()
        };
        let f = KeyFilter {
            dbs,
            db_map: map,
            include_prefixes: include_prefix
                .iter()
                .map(|p| Bytes::from(p.clone()))
                .collect(),
            exclude_prefixes: exclude_prefix
                .iter()
                .map(|p| Bytes::from(p.clone()))
                .collect(),
            include_regex: re("include-regex", include_regex)?,
            exclude_regex: re("exclude-regex", exclude_regex)?,
        };
        for (target, dbs) in f.merged() {
            // Deliberate (only --db-map makes two databases meet): a Redis Cluster has
            // database 0 only, so `--db-map 1:0` is how a source's other databases reach it.
            tracing::info!(
                "--db-map: source databases {dbs:?} are merged into target database {target}"
            );
        }
        Ok(f)
    }

    /// True when everything is copied unchanged.
    #[inline]
    pub fn is_identity(&self) -> bool {
        self.dbs.is_none() && self.db_map.iter().all(|(a, b)| a == b) && !self.has_key_rules()
    }

    pub fn has_key_rules(&self) -> bool {
        !(self.include_prefixes.is_empty()
            && self.exclude_prefixes.is_empty()
            && self.include_regex.is_empty()
            && self.exclude_regex.is_empty())
    }

    /// The target database of source database `db`, or `None` when it is not copied.
    #[inline]
    pub fn map_db(&self, db: u32) -> Option<u32> {
        if let Some(dbs) = &self.dbs {
            if !dbs.contains(&db) {
                return None;
            }
        }
        Some(*self.db_map.get(&db).unwrap_or(&db))
    }

    /// The target databases written to, when they are known (`--db` given).
    pub fn target_dbs(&self) -> Option<Vec<u32>> {
        let dbs = self.dbs.as_ref()?;
        let mut t: Vec<u32> = dbs.iter().filter_map(|d| self.map_db(*d)).collect();
        t.sort_unstable();
        t.dedup();
        Some(t)
    }

    /// Is this key copied (database aside)?
    pub fn key_allowed(&self, key: &[u8]) -> bool {
        if self.exclude_prefixes.iter().any(|p| key.starts_with(p))
            || self.exclude_regex.iter().any(|r| r.is_match(key))
        {
            return false;
        }
        if self.include_prefixes.is_empty() && self.include_regex.is_empty() {
            return true;
        }
        self.include_prefixes.iter().any(|p| key.starts_with(p))
            || self.include_regex.iter().any(|r| r.is_match(key))
    }

    /// Apply the key rules to a command whose keys are `keys` (see the module docs).
    pub fn split_command<K: AsRef<[u8]>>(
        &self,
        name_upper: &[u8],
        args: &[Bytes],
        keys: &[K],
    ) -> Filtered {
        if !self.has_key_rules() {
            return Filtered::Keep;
        }
        let allowed: Vec<bool> = keys.iter().map(|k| self.key_allowed(k.as_ref())).collect();
        if allowed.iter().all(|a| *a) {
            return Filtered::Keep;
        }
        if !allowed.iter().any(|a| *a) {
            return Filtered::Drop;
        }
        match name_upper {
            b"DEL" | b"UNLINK" | b"TOUCH" => {
                let mut out = vec![args[0].clone()];
                out.extend(args[1..].iter().filter(|k| self.key_allowed(k)).cloned());
                Filtered::Rewrite(out)
            }
            b"MSET" if args.len() % 2 == 1 => {
                let mut out = vec![args[0].clone()];
                for pair in args[1..].chunks(2) {
                    if self.key_allowed(&pair[0]) {
                        out.extend(pair.iter().cloned());
                    }
                }
                Filtered::Rewrite(out)
            }
            _ => Filtered::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn dbs_and_map() {
        let f =
            KeyFilter::from_options(Some(vec![0, 1]), &["1:5".into()], &[], &[], &[], &[]).unwrap();
        assert_eq!(f.map_db(0), Some(0));
        assert_eq!(f.map_db(1), Some(5));
        assert_eq!(f.map_db(2), None);
        assert_eq!(f.target_dbs(), Some(vec![0, 5]));
        assert!(f.merged().is_empty());
        // A merge is what --db-map says (a cluster's database 0 takes the others).
        let merged =
            KeyFilter::from_options(Some(vec![0, 1]), &["1:0".into()], &[], &[], &[], &[]).unwrap();
        assert_eq!(merged.merged(), vec![(0, vec![0, 1])]);
        let all = KeyFilter::from_options(None, &["1:0".into()], &[], &[], &[], &[]).unwrap();
        assert_eq!(all.merged(), vec![(0, vec![0, 1])]);
        assert!(
            KeyFilter::from_options(Some(vec![1]), &["1:0".into()], &[], &[], &[], &[]).is_ok()
        );
        assert!(KeyFilter::default().is_identity());
    }

    #[test]
    fn keys() {
        let f = KeyFilter::from_options(
            None,
            &[],
            &["user:".into()],
            &["user:tmp:".into()],
            &["^order:[0-9]+$".into()],
            &[],
        )
        .unwrap();
        assert!(f.key_allowed(b"user:1"));
        assert!(!f.key_allowed(b"user:tmp:1"));
        assert!(f.key_allowed(b"order:12"));
        assert!(!f.key_allowed(b"order:x"));
        assert!(!f.key_allowed(b"other"));
        let args = b(&["DEL", "user:1", "other", "user:2"]);
        let keys: Vec<&[u8]> = args[1..].iter().map(|k| &k[..]).collect();
        assert_eq!(
            f.split_command(b"DEL", &args, &keys),
            Filtered::Rewrite(b(&["DEL", "user:1", "user:2"]))
        );
        let args = b(&["MSET", "user:1", "a", "other", "b"]);
        let keys: Vec<&[u8]> = vec![&args[1], &args[3]];
        assert_eq!(
            f.split_command(b"MSET", &args, &keys),
            Filtered::Rewrite(b(&["MSET", "user:1", "a"]))
        );
        let args = b(&["RENAME", "other", "x"]);
        let keys: Vec<&[u8]> = vec![&args[1], &args[2]];
        assert_eq!(f.split_command(b"RENAME", &args, &keys), Filtered::Drop);
        let args = b(&["RENAME", "user:1", "x"]);
        let keys: Vec<&[u8]> = vec![&args[1], &args[2]];
        assert_eq!(f.split_command(b"RENAME", &args, &keys), Filtered::Keep);
    }
}
