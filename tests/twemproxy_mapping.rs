//! `Placement::owner` against a running nutcracker: every key written through the proxy must
//! sit on the backend we compute, for all 12 hashes under ketama and modula, and for weights,
//! server names, port spellings and hash tags.
//!
//! Three redis-server backends serve every configuration in turn; one nutcracker per
//! configuration writes the keys, then each backend is asked directly which keys it holds.
mod support;

use redis_relay::resp::Reply;
use redis_relay::source::twemproxy::hashkit::HashKind;
use redis_relay::source::twemproxy::parse_config;
use redis_relay::source::twemproxy::placement::{Placement, PlacementError};
use support::{Nutcracker, RedisServer};

/// Keys written per configuration.
const N: usize = 300;

/// ASCII keys of many lengths (every hash tail length), keys with bytes >= 0x80 (signed
/// `char` in nutcracker), keys with `{}` and `$$` tags, empty tags and the empty key.
fn keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(N);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..100 {
        let mut k = format!("key:{i}").into_bytes();
        // Lengths 1 to 40 so every tail (hsieh, murmur, jenkins blocks) is exercised.
        k.resize(1 + i % 40, b'a' + (i % 26) as u8);
        keys.push(k);
    }
    for i in 0..20 {
        keys.push(format!("user:{i}:profile").into_bytes());
    }
    for i in 0..80 {
        let len = 1 + (next() % 24) as usize;
        let mut k: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Make sure a high byte is present, at varying positions (hsieh's 3-byte tail too).
        let pos = i % k.len();
        k[pos] |= 0x80;
        keys.push(k);
    }
    keys.push("café".into());
    keys.push(b"ab\xe9".to_vec());
    keys.push(b"\xff\xfe\xfd".to_vec());
    for i in 0..30 {
        keys.push(format!("{{user{}}}.following:{i}", i % 7).into_bytes());
        keys.push(format!("x$tag{}$y:{i}", i % 5).into_bytes());
    }
    for i in 0..20 {
        keys.push(format!("{{}}:{i}").into_bytes());
        keys.push(format!("a{{}}{{b}}{i}").into_bytes());
        keys.push(format!("{{a{i}").into_bytes());
    }
    keys.push(b"$$".to_vec());
    keys.push(b"{}".to_vec());
    keys.push(Vec::new());
    keys.sort();
    keys.dedup();
    keys.truncate(N);
    keys
}

/// One nutcracker configuration to check.
struct Case {
    label: String,
    /// Pool options, one per line, e.g. `hash: md5\ndistribution: ketama\n`.
    options: String,
    /// Number of `servers:` lines; line `i` points at backend `i % 3`.
    count: usize,
    /// `servers:` line `i`, given its backend's port.
    line: fn(usize, u16) -> String,
}

fn unnamed(_: usize, port: u16) -> String {
    format!("127.0.0.1:{port}:1")
}

fn case(label: &str, options: &str, line: fn(usize, u16) -> String) -> Case {
    Case {
        label: label.to_string(),
        options: options.to_string(),
        count: 3,
        line,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for h in HashKind::ALL {
        for d in ["ketama", "modula"] {
            let options = format!("hash: {h}\ndistribution: {d}\n");
            cases.push(case(&format!("{h}/{d}"), &options, unnamed));
        }
    }
    for d in ["ketama", "modula"] {
        for h in ["fnv1a_64", "murmur", "md5"] {
            let options = format!("hash: {h}\ndistribution: {d}\n");
            cases.push(case(
                &format!("{h}/{d} weights 1,2,3"),
                &options,
                |i, port| format!("127.0.0.1:{port}:{}", i + 1),
            ));
        }
        // Names sort s3 < srv2 < server10: the reverse of the file order.
        for h in ["fnv1a_64", "crc32"] {
            let options = format!("hash: {h}\ndistribution: {d}\n");
            cases.push(case(&format!("{h}/{d} named"), &options, |i, port| {
                let name = ["server10", "srv2", "s3"][i];
                format!("127.0.0.1:{port}:1 {name}")
            }));
        }
        for h in ["fnv1a_64", "hsieh"] {
            let options = format!("hash: {h}\ndistribution: {d}\nhash_tag: \"{{}}\"\n");
            cases.push(case(&format!("{h}/{d} hash_tag {{}}"), &options, unnamed));
        }
        let options = format!("hash: one_at_a_time\ndistribution: {d}\nhash_tag: \"$$\"\n");
        cases.push(case(
            &format!("one_at_a_time/{d} hash_tag $$"),
            &options,
            unnamed,
        ));
        // The name is the text as written: `localhost` and `07005` are not normalised.
        let options = format!("hash: jenkins\ndistribution: {d}\n");
        cases.push(case(
            &format!("jenkins/{d} localhost"),
            &options,
            |_, port| format!("localhost:{port}:1"),
        ));
        cases.push(case(
            &format!("jenkins/{d} port 0NNNN"),
            &options,
            |_, port| format!("127.0.0.1:0{port}:1"),
        ));
    }
    // Defaults: no hash:, no distribution: (fnv1a_64 over ketama).
    cases.push(case("defaults", "", unnamed));
    // Many names over the 3 backends: with 25 or 50 servers ketama gives 156 points each, not
    // 160 (f32 arithmetic), and modula sorts n2 before n10.
    for (n, d) in [(25, "ketama"), (50, "ketama"), (25, "modula")] {
        let mut c = case(
            &format!("{d} {n} names"),
            &format!("distribution: {d}\n"),
            |i, port| format!("127.0.0.1:{port}:1 n{i}"),
        );
        c.count = n;
        cases.push(c);
    }
    cases
}

fn yaml(case: &Case, listen: u16, ports: &[u16]) -> String {
    let mut y = format!(
        "mapping:\n  listen: 127.0.0.1:{listen}\n  redis: true\n  auto_eject_hosts: false\n  timeout: 5000\n"
    );
    for option in case.options.lines() {
        y.push_str(&format!("  {option}\n"));
    }
    y.push_str("  servers:\n");
    for i in 0..case.count {
        y.push_str(&format!(
            "   - {}\n",
            (case.line)(i, ports[i % ports.len()])
        ));
    }
    y
}

fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// Which backend (index into `backends`) holds each key; panics unless exactly one does.
fn holders(backends: &[RedisServer], keys: &[Vec<u8>], label: &str) -> Vec<usize> {
    let mut found: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    for (b, server) in backends.iter().enumerate() {
        let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"EXISTS"[..], k]).collect();
        for (i, r) in server.client().pipeline(&cmds).into_iter().enumerate() {
            if r == Reply::Integer(1) {
                found[i].push(b);
            }
        }
    }
    found
        .into_iter()
        .zip(keys)
        .map(|(f, k)| match f.as_slice() {
            [one] => *one,
            _ => panic!("{label}: key {} is on backends {f:?}", show(k)),
        })
        .collect()
}

#[test]
fn placement_matches_live_nutcracker() {
    let started = std::time::Instant::now();
    let backends: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(&[])).collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let keys = keys();
    assert_eq!(keys.len(), N);

    let mut checked = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    let mut wrong_hash_mismatches = 0usize;
    let cases = cases();
    for case in &cases {
        for b in &backends {
            b.client().cmd(&["FLUSHALL"]);
        }
        let nc = Nutcracker::start_yaml(|listen| yaml(case, listen, &ports));
        let text = std::fs::read_to_string(&nc.config_path).unwrap();
        {
            let mut c = nc.client();
            let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"SET"[..], k, b"v"]).collect();
            for (r, k) in c.pipeline(&cmds).into_iter().zip(&keys) {
                assert_eq!(
                    r,
                    Reply::Simple("OK".into()),
                    "{}: SET {} through nutcracker",
                    case.label,
                    show(k)
                );
            }
        }
        drop(nc);

        let pool = parse_config(&text, None).unwrap().pools.remove(0);
        let placement = Placement::for_pool(&pool).unwrap();
        let actual = holders(&backends, &keys, &case.label);
        for (k, &on) in keys.iter().zip(&actual) {
            let owner = placement.owner(k);
            let port = pool.servers[owner].port;
            if port != ports[on] {
                mismatches.push(format!(
                    "{}: key {} on port {} (backend {on}), computed {} ({})",
                    case.label,
                    show(k),
                    ports[on],
                    port,
                    pool.servers[owner].hash_name()
                ));
            }
            checked += 1;
        }

        // The check has teeth: the same keys placed with the wrong hash disagree somewhere.
        let mut wrong = pool.clone();
        let hash: HashKind = pool.hash.as_deref().unwrap_or("fnv1a_64").parse().unwrap();
        let other = HashKind::ALL
            .into_iter()
            .find(|&h| h != hash && h != HashKind::Crc32)
            .unwrap();
        wrong.hash = Some(other.to_string());
        let wrong = Placement::for_pool(&wrong).unwrap();
        wrong_hash_mismatches += keys
            .iter()
            .zip(&actual)
            .filter(|(k, &on)| wrong_port(&pool, &wrong, k) != ports[on])
            .count();
    }
    eprintln!(
        "checked {checked} keys in {} configurations against nutcracker in {:?}",
        cases.len(),
        started.elapsed()
    );
    assert_eq!(checked, N * cases.len());
    assert!(
        mismatches.is_empty(),
        "{} of {checked} keys are not where Placement says; first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
    assert!(
        wrong_hash_mismatches > checked / 10,
        "a wrong hash should misplace many keys, misplaced {wrong_hash_mismatches}"
    );
}

fn wrong_port(
    pool: &redis_relay::source::twemproxy::PoolInfo,
    wrong: &Placement,
    key: &[u8],
) -> u16 {
    pool.servers[wrong.owner(key)].port
}

#[test]
fn random_distribution_is_not_computable() {
    let yaml = "r:\n  listen: 127.0.0.1:22199\n  redis: true\n  distribution: random\n  servers:\n   - 127.0.0.1:7001:1\n   - 127.0.0.1:7002:1\n";
    let pool = parse_config(yaml, None).unwrap().pools.remove(0);
    let e = Placement::for_pool(&pool).unwrap_err();
    assert_eq!(
        e,
        PlacementError::NotComputable {
            pool: "r".into(),
            distribution: "random"
        }
    );
}
