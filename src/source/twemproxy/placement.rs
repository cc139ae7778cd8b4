//! Which server of a pool owns a key: nutcracker's `distribution:` over its `hash:`.
//!
//! The pipeline, as `server_pool_idx` runs it:
//! 1. a pool with a single server owns every key (nothing is hashed);
//! 2. with `hash_tag:`, only the bytes between the first opening byte and the first closing
//!    byte after it are hashed, when there is at least one; otherwise the whole key;
//! 3. an empty hashed part gives 0, anything else the pool's hash (default `fnv1a_64`);
//! 4. `ketama` (default) takes the first continuum point >= h, wrapping to the first point;
//!    `modula` takes slot `h mod W` of the servers repeated `weight` times.
//!
//! nutcracker indexes servers in its own array, sorted by name (shorter first, then bytewise);
//! [`Placement::owner`] translates back to the pool's file order so callers can index
//! [`PoolInfo::servers`] directly.
//!
//! Only the configured servers are modelled: with `auto_eject_hosts: true` nutcracker rebuilds
//! the distribution while a server is ejected, which nobody outside the proxy can observe.

use super::hashkit::HashKind;
use super::md5;
use super::PoolInfo;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A nutcracker `distribution:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Ketama,
    Modula,
    Random,
}

impl Distribution {
    /// nutcracker's default when a pool has no `distribution:`.
    pub const DEFAULT: Distribution = Distribution::Ketama;

    /// The name written in the YAML.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Ketama => "ketama",
            Distribution::Modula => "modula",
            Distribution::Random => "random",
        }
    }
}

impl FromStr for Distribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Distribution::Ketama,
            Distribution::Modula,
            Distribution::Random,
        ]
        .into_iter()
        .find(|d| d.name() == s)
        .ok_or_else(|| {
            format!("unknown distribution {s:?} (expected one of ketama, modula, random)")
        })
    }
}

/// Why a pool's key ownership cannot be computed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("twemproxy pool {pool:?} uses `distribution: {distribution}`: nutcracker picks a random server for every request, so which backend holds a key cannot be computed (ask the peers instead)")]
    NotComputable {
        pool: String,
        distribution: &'static str,
    },
    #[error("twemproxy pool {pool:?} has no servers")]
    NoServers { pool: String },
    #[error("twemproxy pool {pool:?}: {reason}")]
    Invalid { pool: String, reason: String },
}

/// Key ownership for one pool: immutable, cheap to share (`Arc`) and to query.
#[derive(Clone)]
pub struct Placement {
    hash: HashKind,
    hash_tag: Option<[u8; 2]>,
    ring: Ring,
}

#[derive(Clone)]
enum Ring {
    /// One server: index 0, nothing hashed.
    Single,
    /// Point values ascending, and the file index of each point's server.
    Ketama { values: Vec<u32>, owners: Vec<u32> },
    /// File index per slot: servers in name order, each repeated `weight` times.
    Modula { slots: Vec<u32> },
}

/// Points nutcracker gives a server of weight `weight` among `n` servers weighing `total`:
/// `4 * floor(40 * n * weight / total)`, computed in `f32` step by step as the C code does
/// (an `f64` formula disagrees for some weights and counts, e.g. n = 25 gives 156, not 160).
pub fn ketama_points(weight: u32, total: u32, n: u32) -> u32 {
    let x = weight as f32 / total as f32 * 160.0 / 4.0 * n as f32;
    // The C code adds 1e-10 in double and rounds back to float; kept for fidelity.
    (((x as f64) + 1e-10) as f32).floor() as u32 * 4
}

/// The four continuum values of point group `i` of a server: MD5 of `<name>-<i>` (cut to 272
/// bytes like nutcracker's buffer), read as four little-endian `u32`.
pub fn ketama_group(hash_name: &str, i: u32) -> [u32; 4] {
    let mut s = format!("{hash_name}-{i}").into_bytes();
    s.truncate(272);
    let d = md5::digest(&s);
    let le = |k: usize| u32::from_le_bytes([d[k], d[k + 1], d[k + 2], d[k + 3]]);
    [le(0), le(4), le(8), le(12)]
}

/// The part of `key` that is hashed under `hash_tag`: the bytes between the first opening
/// byte and the first closing byte after it, if there is at least one; otherwise the whole
/// key. A failed match is not retried at a later opening byte.
pub fn hashed_part(key: &[u8], hash_tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = hash_tag else {
        return key;
    };
    let Some(start) = key.iter().position(|&b| b == open) else {
        return key;
    };
    match key[start + 1..].iter().position(|&b| b == close) {
        Some(len) if len > 0 => &key[start + 1..start + 1 + len],
        _ => key,
    }
}

/// nutcracker's server array order: by hash name, shorter first, then bytewise.
fn name_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

impl Placement {
    /// The placement of `pool` with all its servers up.
    pub fn for_pool(pool: &PoolInfo) -> Result<Placement, PlacementError> {
        let invalid = |reason: String| PlacementError::Invalid {
            pool: pool.name.clone(),
            reason,
        };
        let hash = match &pool.hash {
            None => HashKind::DEFAULT,
            Some(h) => h
                .parse()
                .map_err(|e: super::hashkit::UnknownHash| invalid(e.to_string()))?,
        };
        let distribution = match &pool.distribution {
            None => Distribution::DEFAULT,
            Some(d) => d.parse().map_err(invalid)?,
        };
        let servers = &pool.servers;
        if servers.is_empty() {
            return Err(PlacementError::NoServers {
                pool: pool.name.clone(),
            });
        }
        if let Some(s) = servers.iter().find(|s| s.weight == 0) {
            return Err(invalid(format!("server {} has weight 0", s.address)));
        }
        let ring = if servers.len() == 1 {
            // nutcracker returns index 0 before looking at the distribution, random included.
            Ring::Single
        } else {
            match distribution {
                Distribution::Random => {
                    return Err(PlacementError::NotComputable {
                        pool: pool.name.clone(),
                        distribution: Distribution::Random.name(),
                    })
                }
                Distribution::Ketama => ketama(pool),
                Distribution::Modula => modula(pool),
            }
        };
        Ok(Placement {
            hash,
            hash_tag: pool.hash_tag,
            ring,
        })
    }

    /// The hash nutcracker feeds to the distribution for `key` (after the hash tag).
    pub fn hash_of(&self, key: &[u8]) -> u32 {
        let part = hashed_part(key, self.hash_tag);
        if part.is_empty() {
            0
        } else {
            self.hash.hash(part)
        }
    }

    /// Index into the pool's `servers` (file order) of the server that owns `key`.
    pub fn owner(&self, key: &[u8]) -> usize {
        match &self.ring {
            Ring::Single => 0,
            Ring::Ketama { values, owners } => {
                let h = self.hash_of(key);
                let i = values.partition_point(|&v| v < h);
                let i = if i == values.len() { 0 } else { i };
                owners[i] as usize
            }
            Ring::Modula { slots } => {
                let h = self.hash_of(key);
                slots[(h % slots.len() as u32) as usize] as usize
            }
        }
    }

    /// Number of ketama points (0 for modula and single-server pools).
    pub fn continuum_len(&self) -> usize {
        match &self.ring {
            Ring::Ketama { values, .. } => values.len(),
            _ => 0,
        }
    }
}

fn ketama(pool: &PoolInfo) -> Ring {
    let servers = &pool.servers;
    let n = servers.len() as u32;
    let total: u32 = servers.iter().map(|s| s.weight).sum();
    let mut points: Vec<(u32, u32)> = Vec::with_capacity(servers.len() * 160);
    for (idx, s) in servers.iter().enumerate() {
        let name = s.hash_name();
        for i in 0..ketama_points(s.weight, total, n) / 4 {
            points.extend(ketama_group(&name, i).map(|v| (v, idx as u32)));
        }
    }
    // nutcracker's qsort compares values only, so equal values of two servers (a 2^-32 event
    // per pair) have no defined order there; ties are broken by name order here.
    let rank: Vec<usize> = {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.sort_by(|&a, &b| name_order(&servers[a].hash_name(), &servers[b].hash_name()));
        let mut rank = vec![0; servers.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        rank
    };
    points.sort_unstable_by_key(|&(v, idx)| (v, rank[idx as usize]));
    Ring::Ketama {
        values: points.iter().map(|p| p.0).collect(),
        owners: points.iter().map(|p| p.1).collect(),
    }
}

fn modula(pool: &PoolInfo) -> Ring {
    let servers = &pool.servers;
    let mut order: Vec<usize> = (0..servers.len()).collect();
    order.sort_by(|&a, &b| name_order(&servers[a].hash_name(), &servers[b].hash_name()));
    let slots = order
        .iter()
        .flat_map(|&i| std::iter::repeat_n(i as u32, servers[i].weight as usize))
        .collect();
    Ring::Modula { slots }
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = match &self.ring {
            Ring::Single => "single server".to_string(),
            Ring::Ketama { values, .. } => format!("ketama, {} points", values.len()),
            Ring::Modula { slots } => format!("modula, {} slots", slots.len()),
        };
        f.debug_struct("Placement")
            .field("hash", &self.hash)
            .field("hash_tag", &self.hash_tag)
            .field("ring", &ring)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_config, ServerLine};
    use super::*;

    fn pool(extra: &str, servers: &[&str]) -> PoolInfo {
        let mut yaml = format!("p:\n  redis: true\n{extra}  servers:\n");
        for s in servers {
            yaml.push_str(&format!("   - {s}\n"));
        }
        parse_config(&yaml, None).unwrap().pools.remove(0)
    }

    #[test]
    fn ketama_point_values() {
        assert_eq!(ketama_group("server1", 8)[0], 3853726576);
        assert_eq!(ketama_group("server1", 8)[3], 2667054752);
    }

    #[test]
    fn ketama_point_counts() {
        assert_eq!(ketama_points(1, 3, 3), 160);
        for n in [25, 47, 50, 55, 61, 71, 94, 100] {
            assert_eq!(ketama_points(1, n, n), 156, "n = {n}");
        }
        for n in [2, 3, 5, 10, 24, 26, 48, 99] {
            assert_eq!(ketama_points(1, n, n), 160, "n = {n}");
        }
        assert_eq!(ketama_points(1, 3, 2), 104);
        assert_eq!(ketama_points(2, 3, 2), 212);
        assert_eq!(ketama_points(1, 1001, 2), 0);
        let p = pool("", &["127.0.0.1:6379:1", "127.0.0.1:6380:2"]);
        assert_eq!(Placement::for_pool(&p).unwrap().continuum_len(), 316);
    }

    #[test]
    fn hash_tags() {
        let braces = Some(*b"{}");
        assert_eq!(hashed_part(b"a{}{b}", braces), b"a{}{b}");
        assert_eq!(hashed_part(b"{a", braces), b"{a");
        assert_eq!(hashed_part(b"{user1000}.following", braces), b"user1000");
        assert_eq!(hashed_part(b"x{}", braces), b"x{}");
        assert_eq!(hashed_part(b"}{a}", braces), b"a");
        assert_eq!(
            hashed_part(b"{user1000}.following", None),
            b"{user1000}.following"
        );
        let dollars = Some(*b"$$");
        assert_eq!(hashed_part(b"x$tag$y", dollars), b"tag");
        assert_eq!(hashed_part(b"x$$y$z$", dollars), b"x$$y$z$");
    }

    #[test]
    fn modula_uses_name_order() {
        let names = ["server1", "server2", "srv3", "s4", "aaaaaaaaaaa"];
        let lines: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("10.0.0.{i}:6379:1 {n}"))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let p = pool("  distribution: modula\n  hash: crc32\n", &refs);
        let pl = Placement::for_pool(&p).unwrap();
        // crc32 gives 0..32767; pick keys landing on each slot in turn.
        let mut seen = Vec::new();
        for slot in 0..5u32 {
            let key = (0..)
                .map(|i| format!("k{i}"))
                .find(|k| HashKind::Crc32.hash(k.as_bytes()) % 5 == slot)
                .unwrap();
            seen.push(names[pl.owner(key.as_bytes())]);
        }
        assert_eq!(seen, ["s4", "srv3", "server1", "server2", "aaaaaaaaaaa"]);
    }

    #[test]
    fn modula_weights_repeat_slots() {
        let p = pool(
            "  distribution: modula\n  hash: crc32\n",
            &["h:2:2 b", "h:1:1 a"],
        );
        let pl = Placement::for_pool(&p).unwrap();
        // Slots: a, b, b (file indices 1, 0, 0).
        for i in 0..50 {
            let key = format!("key{i}");
            let want = [1, 0, 0][(HashKind::Crc32.hash(key.as_bytes()) % 3) as usize];
            assert_eq!(pl.owner(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn ketama_lookup_is_lower_bound_with_wrap() {
        let p = pool("  hash: md5\n", &["h:1:1 one", "h:2:1 two"]);
        let pl = Placement::for_pool(&p).unwrap();
        let Ring::Ketama { values, owners } = &pl.ring else {
            panic!("ketama expected")
        };
        assert_eq!(values.len(), 320);
        assert!(values.windows(2).all(|w| w[0] <= w[1]));
        // The empty key hashes to 0: the first point.
        assert_eq!(pl.owner(b""), owners[0] as usize);
        // A key hashing above the last point wraps to the first.
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| HashKind::Md5.hash(k.as_bytes()) > *values.last().unwrap())
            .unwrap();
        assert_eq!(pl.owner(key.as_bytes()), owners[0] as usize);
        // Otherwise the first point >= h.
        for i in 0..200 {
            let key = format!("key:{i}");
            let h = HashKind::Md5.hash(key.as_bytes());
            let want = values.iter().position(|&v| v >= h).unwrap_or(0);
            assert_eq!(pl.owner(key.as_bytes()), owners[want] as usize);
        }
    }

    #[test]
    fn single_server_and_random() {
        let p = pool("  distribution: random\n", &["h:1:1"]);
        assert_eq!(Placement::for_pool(&p).unwrap().owner(b"anything"), 0);
        let p = pool("  distribution: random\n", &["h:1:1", "h:2:1"]);
        let e = Placement::for_pool(&p).unwrap_err();
        assert_eq!(
            e,
            PlacementError::NotComputable {
                pool: "p".into(),
                distribution: "random"
            }
        );
        assert!(e.to_string().contains("random server"), "{e}");
        let mut p = pool("", &["h:1:1"]);
        p.servers.clear();
        assert!(matches!(
            Placement::for_pool(&p),
            Err(PlacementError::NoServers { .. })
        ));
    }

    #[test]
    fn names_not_addresses_place_keys() {
        // Same names, other addresses: same owners. 11211 drops the port from the name.
        let a = pool("", &["10.0.0.1:6379:1 x", "10.0.0.2:6379:1 y"]);
        let b = pool("", &["10.9.9.1:7000:1 x", "10.9.9.2:7001:1 y"]);
        let c = pool("", &["x:11211:1", "y:11211:1"]);
        let (a, b, c) = (
            Placement::for_pool(&a).unwrap(),
            Placement::for_pool(&b).unwrap(),
            Placement::for_pool(&c).unwrap(),
        );
        for i in 0..100 {
            let k = format!("k{i}");
            assert_eq!(a.owner(k.as_bytes()), b.owner(k.as_bytes()));
            assert_eq!(a.owner(k.as_bytes()), c.owner(k.as_bytes()));
        }
        assert_eq!(
            ServerLine::parse("/run/redis.sock:1").unwrap().hash_name(),
            "/run/redis.sock:"
        );
    }

    #[test]
    fn placement_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Placement>();
    }
}
