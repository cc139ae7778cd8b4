//! `--cluster`: the same full sync and catch-up into a Redis Cluster of 3 masters with one
//! replica each (`redis-cli --cluster create ... --cluster-replicas 1`), next to the single
//! target of the same run and against the cluster's own ingest (`redis-benchmark --cluster`).
//!
//! Order within a run: the single target's full sync; the relay into the cluster (full sync of
//! the same data, timed), stopped; the single target's catch-up and steady lag; the relay into
//! the cluster started again from its state (it resumes and applies what the single phase
//! wrote), then the cluster's catch-up rounds. So only one relay works at a time.

use super::*;

/// Masters of the bench's cluster (each with one replica).
const MASTERS: usize = 3;
/// Name of the relay into the cluster (its log and state directory).
const RELAY: &str = "relay-cluster";

fn log(s: String) {
    eprintln!("[{:>7.1}s] {s}", START.with(|t| t.elapsed().as_secs_f64()));
}

/// What the cluster phases share with the rest of the run.
pub struct Setup<'a> {
    pub dir: &'a Path,
    pub nut: &'a Nutcracker,
    pub masters: [&'a Server; 2],
    pub tck: f64,
    pub rounds: usize,
    pub catchup_n: u64,
    pub perf_dir: &'a Option<PathBuf>,
}

impl Setup<'_> {
    /// The relay from nutcracker's pool into `cl` (one master's URL is the seed).
    fn relay(&self, cl: &Cluster) -> Relay {
        Relay::start_url(
            self.dir,
            RELAY,
            &["--twemproxy".into(), self.nut.config.display().to_string()],
            &format!("redis://127.0.0.1:{}", cl.masters[0]),
        )
    }
}

/// The single target's figures of the same run, for the side-by-side rows.
pub struct Single {
    pub full_secs: f64,
    pub catch_ops: f64,
}

pub struct Cluster {
    nodes: Vec<Server>,
    /// Ports of the masters, as `CLUSTER NODES` says after the creation.
    masters: Vec<u16>,
}

impl Cluster {
    pub fn start(dir: &Path) -> Cluster {
        for attempt in 0..4 {
            match Cluster::try_start(dir, attempt) {
                Ok(c) => return c,
                Err(e) => log(format!("cluster attempt {attempt} failed: {e}")),
            }
        }
        panic!("could not start a Redis Cluster");
    }

    fn try_start(dir: &Path, attempt: usize) -> Res<Cluster> {
        let mut nodes: Vec<Server> = Vec::new();
        for i in 0..2 * MASTERS {
            let name = format!("cluster-{attempt}-{i}");
            let node = (0..20)
                .find_map(|_| {
                    let port = free_port();
                    let bus = port.checked_add(10_000)?;
                    let clash = nodes
                        .iter()
                        .any(|n| n.port == bus || n.port.checked_add(10_000) == Some(port));
                    if clash || TcpListener::bind(("127.0.0.1", bus)).is_err() {
                        return None;
                    }
                    let conf = format!("cluster-config-file nodes-{port}.conf");
                    let extra = [
                        "cluster-enabled yes",
                        &conf,
                        "cluster-node-timeout 5000",
                        "repl-ping-replica-period 1",
                    ];
                    Server::start_at(dir, &name, &system_server(), port, &extra)
                })
                .ok_or("no free port pair for a cluster node")?;
            nodes.push(node);
        }
        let out = Command::new(find_bin(&[
            "/usr/bin/redis-cli",
            "/usr/local/bin/redis-cli",
        ]))
        .args(["--cluster", "create"])
        .args(nodes.iter().map(|n| n.addr()))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let mut cl = Cluster {
            nodes,
            masters: Vec::new(),
        };
        cl.wait_ready(Duration::from_secs(60))?;
        Ok(cl)
    }

    /// Every node says `cluster_state:ok` with every slot assigned and every node known, and
    /// every replica's link is up; then the masters are read from `CLUSTER NODES`.
    fn wait_ready(&mut self, limit: Duration) -> Res<()> {
        let t = Instant::now();
        let ready = |n: &Server| {
            let mut c = n.client();
            let info = c.cmd(&["CLUSTER", "INFO"]).as_text().unwrap_or_default();
            let has = |l: &str| info.lines().any(|x| x.trim() == l);
            let link = c.info_field("replication", "role").as_deref() == Some("master")
                || c.info_field("replication", "master_link_status").as_deref() == Some("up");
            has("cluster_state:ok")
                && has("cluster_slots_assigned:16384")
                && has(&format!("cluster_known_nodes:{}", 2 * MASTERS))
                && link
        };
        while !self.nodes.iter().all(ready) {
            if t.elapsed() > limit {
                return Err(format!("cluster not ready within {limit:?}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let view = self.nodes[0]
            .client()
            .cmd(&["CLUSTER", "NODES"])
            .as_text()
            .unwrap_or_default();
        self.masters = view
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.contains("master"))
            })
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?.split(['@', ',']).next()?;
                addr.rsplit(':').next()?.parse().ok()
            })
            .collect();
        if self.masters.len() != MASTERS {
            return Err(format!("CLUSTER NODES shows masters {:?}", self.masters).into());
        }
        Ok(())
    }

    fn master_servers(&self) -> impl Iterator<Item = &Server> {
        self.nodes.iter().filter(|n| self.masters.contains(&n.port))
    }

    fn dbsize(&self) -> i64 {
        self.master_servers().map(dbsize).sum()
    }

    /// The relay's own keys (records, `redis-relay:*`) over every master.
    fn own_keys(&self) -> i64 {
        self.master_servers().map(relay_keys).sum()
    }

    /// `calls` of each of `names`, summed over the masters (replicas left out).
    fn calls<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let mut out = [0u64; N];
        for m in self.master_servers() {
            for (o, c) in out.iter_mut().zip(calls(m, names)) {
                *o += c;
            }
        }
        out
    }

    /// CPU seconds of (the masters, the replicas).
    fn cpu(&self, tck: f64) -> (f64, f64) {
        let (mut m, mut r) = (0.0, 0.0);
        for n in &self.nodes {
            let s = cpu_secs(n.child.id(), tck);
            if self.masters.contains(&n.port) {
                m += s;
            } else {
                r += s;
            }
        }
        (m, r)
    }

    fn each_master(&self, args: &[&str]) {
        for m in self.master_servers() {
            m.client().cmd(args);
        }
    }

    /// `args` on the master of its key's slot (following MOVED from the first master).
    fn cmd(&self, args: &[&[u8]]) -> Reply {
        let mut port = self.masters[0];
        for _ in 0..3 {
            let r = Client::connect(port)
                .and_then(|mut c| c.try_cmd(args))
                .expect("cluster I/O");
            let Reply::Error(e) = &r else { return r };
            let e = String::from_utf8_lossy(e);
            let moved = e.strip_prefix("MOVED ").and_then(|x| x.split(' ').nth(1));
            match moved.and_then(|a| a.rsplit(':').next()?.parse().ok()) {
                Some(p) => port = p,
                None => return r,
            }
        }
        panic!(
            "{:?}: too many redirections",
            String::from_utf8_lossy(args[0])
        )
    }

    /// Compare `n` random keys of the sources with the cluster: type and string values.
    fn sample_check(&self, sources: &[&Server], n: usize) -> usize {
        let mut bad = 0;
        for m in sources.iter().cycle().take(n) {
            let mut c = m.client();
            let Reply::Bulk(Some(key)) = c.cmd(&["RANDOMKEY"]) else {
                continue;
            };
            let ty = c.cmd(&[b"TYPE".as_slice(), &key]);
            let same = ty == self.cmd(&[b"TYPE".as_slice(), &key[..]])
                && (ty.as_text().as_deref() != Some("string")
                    || c.cmd(&[b"GET".as_slice(), &key])
                        == self.cmd(&[b"GET".as_slice(), &key[..]]));
            if !same {
                bad += 1;
                if bad <= 3 {
                    log(format!("key {} differs", String::from_utf8_lossy(&key)));
                }
            }
        }
        bad
    }
}

/// Log lines of the relay at WARN or above (and redirections), for the notes.
fn warnings(relay: &Relay) -> Vec<String> {
    let text = std::fs::read_to_string(&relay.log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("MOVED"))
        .map(str::to_string)
        .collect()
}

/// The sum of a metric's series (every label set).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, v| a + v)
}

/// Stop the relay with SIGTERM; its redirections, warnings and a non-zero exit code go into
/// the log and the notes.
fn stop_relay(mut relay: Relay, phase: &str, notes: &mut Vec<String>) {
    let m = relay.metrics();
    let redirects = metric_sum(&m, "redis_relay_cluster_redirects_total");
    let refreshes = metric_sum(&m, "redis_relay_cluster_topology_refreshes_total");
    let cross = metric_sum(&m, "redis_relay_cross_slot_total");
    let series = m
        .lines()
        .filter(|l| l.starts_with("redis_relay_cluster_"))
        .count();
    log(format!(
        "cluster relay ({phase}): {redirects} redirections, {refreshes} topology refreshes, {cross} cross-slot commands ({series} redis_relay_cluster_* series)"
    ));
    if redirects > 0.0 {
        notes.push(format!(
            "cluster relay ({phase}): {redirects} redirections on a cluster whose slots did not move"
        ));
    }
    stop_child(&mut relay.child);
    let code = relay.child.try_wait().ok().flatten().and_then(|s| s.code());
    if code != Some(0) {
        notes.push(format!(
            "cluster relay ({phase}) exit code after SIGTERM: {code:?}"
        ));
    }
    let w = warnings(&relay);
    if !w.is_empty() {
        notes.push(format!(
            "cluster relay log ({phase}): {} warning lines, the first: {}",
            w.len(),
            w[0]
        ));
    }
}

/// Start the cluster, then the relay into it; timed until the masters together hold as many
/// keys (less the relay's own) as the sources. The relay is stopped afterwards.
pub fn full_sync(
    s: &Setup,
    expected: i64,
    single: &Single,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Res<Cluster> {
    let cl = Cluster::start(s.dir);
    log(format!(
        "cluster: masters {:?}, {} nodes",
        cl.masters,
        cl.nodes.len()
    ));
    let cpu0 = cl.cpu(s.tck);
    let t = Instant::now();
    let mut relay = s.relay(&cl);
    let pid = relay.pid();
    let sampler = RssSampler::start(pid);
    let perf = Perf::start(s.perf_dir, pid, "cluster-full-sync");
    // Plain strings arrive in MSETs (one per slot), the rest in RESTOREs: keys are counted
    // (DBSIZE over the masters), the relay's records only once that count is reached.
    // When a quarter, a half, three quarters of the keys were there (how evenly they came).
    let mut marks = Vec::new();
    let secs = loop {
        let n = cl.dbsize();
        while marks.len() < 3 && n >= expected * (marks.len() as i64 + 1) / 4 {
            marks.push(format!("{:.2}", t.elapsed().as_secs_f64()));
        }
        if n >= expected && cl.dbsize() - cl.own_keys() >= expected {
            break t.elapsed().as_secs_f64();
        }
        relay.check_alive();
        assert!(t.elapsed() < Duration::from_secs(3600), "never completed");
        std::thread::sleep(Duration::from_millis(5));
    };
    let (cm, cr) = cl.cpu(s.tck);
    let (cm, cr) = (cm - cpu0.0, cr - cpu0.1);
    let rcpu = cpu_secs(pid, s.tck);
    let done = wait_caught_up(&mut relay, &s.masters, Duration::from_secs(3600))?;
    let rss = sampler.finish(pid);
    perf.stop();
    let [restore, mset, multi] = cl.calls(["restore", "mset", "multi"]);
    let (own, got) = (cl.own_keys(), cl.dbsize() - cl.own_keys());
    let bad = cl.sample_check(&s.masters, 500);
    log(format!(
        "cluster full sync: {secs:.2}s (25/50/75% of the keys after {} s; metrics said done {:.3}s later), relay {rcpu:.1} CPU s, peak RSS {}, cluster masters {cm:.1} CPU s, replicas {cr:.1}; masters ran {restore} RESTORE, {mset} MSET, {multi} MULTI; {got} keys (+{own} own), {bad} of 500 sampled keys differ",
        marks.join("/"),
        done.as_secs_f64(),
        mib(rss)
    ));
    if got != expected || bad > 0 {
        notes.push(format!(
            "cluster full sync check FAILED: {got} keys (expected {expected}), {bad} of 500 sampled keys differ"
        ));
    }
    stop_relay(relay, "full sync", notes);
    full_rows(rows, expected, secs, single.full_secs);
    rows.push(row(
        "full sync into the cluster: relay CPU, peak RSS; CPU of the cluster's masters / replicas",
        format!("{rcpu:.1} CPU s, {}", mib(rss)),
        &format!("masters {cm:.1} CPU s, replicas {cr:.1} CPU s"),
        String::new(),
        "(info)",
        None,
    ));
    Ok(cl)
}

fn full_rows(rows: &mut Vec<Row>, keys: i64, secs: f64, single: f64) {
    rows.push(row(
        &format!("full sync into a 3-master cluster (+1 replica each), {keys} keys: time"),
        format!("{secs:.2} s ({:.0} keys/s)", keys as f64 / secs),
        &format!(
            "{single:.2} s ({:.0} keys/s), the relay into one target, same run",
            keys as f64 / single
        ),
        format!("{:.2}x", secs / single),
        "≤ 1.0x",
        Some(secs <= single),
    ));
}

/// One round's figures.
struct Round {
    rate: f64,
    ingest: f64,
    /// CPU seconds from the unpause until the masters matched: relay, masters, replicas.
    cpu: (f64, f64, f64),
}

/// The relay into the cluster again (it resumes from its state and applies what the single
/// target's phase wrote meanwhile), then the catch-up rounds.
pub fn catch_up(
    s: &Setup,
    cl: &Cluster,
    single: &Single,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Res<()> {
    let mut relay = s.relay(cl);
    let resumed = wait_caught_up(&mut relay, &s.masters, Duration::from_secs(3600))?;
    log(format!(
        "cluster relay restarted from its state: applied the single phase's writes in {:.1}s",
        resumed.as_secs_f64()
    ));
    let pid = relay.pid();
    let sampler = RssSampler::start(pid);
    let perf = Perf::start(s.perf_dir, pid, "cluster-catch-up");
    let mut all = Vec::new();
    for r in 1..=s.rounds {
        all.push(round(s, cl, &mut relay, r, notes)?);
    }
    let rss = sampler.finish(pid);
    perf.stop();
    stop_relay(relay, "catch-up", notes);
    let rate = median(&mut all.iter().map(|r| r.rate).collect::<Vec<_>>());
    let ingest = median(&mut all.iter().map(|r| r.ingest).collect::<Vec<_>>());
    let ratio = median(&mut all.iter().map(|r| r.rate / r.ingest).collect::<Vec<_>>());
    let n = all.len() as f64;
    let cpu = all.iter().fold((0.0, 0.0, 0.0), |a, r| {
        (a.0 + r.cpu.0 / n, a.1 + r.cpu.1 / n, a.2 + r.cpu.2 / n)
    });
    let load = 4 * s.catchup_n;
    rows.push(row(
        &format!("catch-up into the cluster after pausing its masters ({load} ops, `redis-benchmark -P 16` via nutcracker), medians of {} rounds", s.rounds),
        format!("{rate:.0} ops/s"),
        &format!("{ingest:.0} ops/s, the cluster's own ingest (`redis-benchmark --cluster -P 64`)"),
        format!("{:.0}% (median of the rounds' ratios)", 100.0 * ratio),
        "≥ 80%",
        Some(ratio >= 0.8),
    ));
    rows.push(row(
        "catch-up: into the cluster vs into one target (same run, same load)",
        format!("{rate:.0} ops/s"),
        &format!("{:.0} ops/s, the relay into one target", single.catch_ops),
        format!("{:.2}x", rate / single.catch_ops),
        "(info)",
        None,
    ));
    rows.push(row(
        "catch-up into the cluster: per round from unpause to caught up, CPU of the relay; of the cluster's masters / replicas; relay peak RSS",
        format!("{:.2} CPU s, {}", cpu.0, mib(rss)),
        &format!("masters {:.2} CPU s, replicas {:.2} CPU s", cpu.1, cpu.2),
        String::new(),
        "(info)",
        None,
    ));
    Ok(())
}

/// Pause every master (`CLIENT PAUSE WRITE`), the load through nutcracker, wait until the
/// relay received it, unpause, time until the masters' commandstats match the sources'; then
/// the cluster's own ingest of the same load.
fn round(
    s: &Setup,
    cl: &Cluster,
    relay: &mut Relay,
    n: usize,
    notes: &mut Vec<String>,
) -> Res<Round> {
    let names = ["set", "lpush", "hset", "incr"];
    cl.each_master(&["CLIENT", "PAUSE", "3600000", "WRITE"]);
    let tgt0 = cl.calls(names);
    let src0 = s.masters.map(cmd_calls);
    let t = Instant::now();
    let reqs = catchup_load(s.nut.port, s.catchup_n)?.0;
    let src1 = s.masters.map(cmd_calls);
    let want: Vec<u64> = (0..4)
        .map(|i| src1[0][i] + src1[1][i] - src0[0][i] - src0[1][i])
        .collect();
    let load_secs = t.elapsed().as_secs_f64();
    if !wait_recv(relay, &s.masters, Duration::from_secs(60)) {
        notes.push(format!(
            "cluster catch-up round {n}: the relay had not received the load after 60 s"
        ));
    }
    let cpu0 = (cpu_secs(relay.pid(), s.tck), cl.cpu(s.tck));
    cl.each_master(&["CLIENT", "UNPAUSE"]);
    let t_unpause = Instant::now();
    // As on the single target: HSET and INCR equal (SETs go in MSETs, LPUSHes to one list
    // in one LPUSH). Each slot's lane applies in order, and a slot holding some of the
    // round's SET keys, or `mylist`, holds some of its HSET keys too (about 6 per slot:
    // absent from a given slot with odds of about e^-6), which come last in the stream.
    let catch = loop {
        let now = cl.calls(names);
        let d: Vec<u64> = (0..4).map(|i| now[i] - tgt0[i]).collect();
        if d[2..] == want[2..] {
            break t_unpause.elapsed().as_secs_f64();
        }
        relay.check_alive();
        assert!(
            t_unpause.elapsed() < Duration::from_secs(3600),
            "never caught up"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let (c1, (m1, r1)) = (cpu_secs(relay.pid(), s.tck), cl.cpu(s.tck));
    let cpu = (c1 - cpu0.0, m1 - (cpu0.1).0, r1 - (cpu0.1).1);
    let metrics = wait_caught_up(relay, &s.masters, Duration::from_secs(3600))?;
    let rate = reqs as f64 / catch;
    let (treqs, tsecs) = redis_benchmark_with(cl.masters[0], s.catchup_n, 64, &["--cluster"])?;
    let ingest = treqs as f64 / tsecs;
    log(format!(
        "cluster catch-up round {n}: {reqs} requests in {load_secs:.1}s while the masters were paused; matched {catch:.3}s after unpause ({rate:.0} ops/s; metrics {:.3}s later; relay {:.2} CPU s, masters {:.2}, replicas {:.2}); the cluster's own ingest {ingest:.0} ops/s: {:.0}%",
        metrics.as_secs_f64(),
        cpu.0,
        cpu.1,
        cpu.2,
        100.0 * rate / ingest
    ));
    Ok(Round { rate, ingest, cpu })
}
