//! The relay's own HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text), `/status`
//! (JSON, [`super::StatusReport`]), `/healthz` (liveness) and `/readyz` (every source in
//! sync). One thread with a small tokio runtime serves HTTP/1 with hyper; it starts before the
//! relay (after the prechecks), so probes get an answer (`starting`) while the relay connects
//! to its target.
//!
//! Our own server rather than the exporter's listener: the exporter serves only `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::StatusReport;
use crate::relay::RelayHandle;

/// A status loop whose last look is older than this is wedged: `/healthz` fails.
pub const WEDGED_AFTER: Duration = Duration::from_secs(10);
/// How often the Prometheus recorder drains its histograms (the exporter's listener did it).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot listen on {addr} (--metrics-addr): {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(String),
    #[error("cannot start the HTTP thread: {0}")]
    Thread(std::io::Error),
}

/// What the handlers read.
struct Shared {
    relay: OnceLock<RelayHandle>,
    prometheus: PrometheusHandle,
    started: Instant,
}

/// The running endpoint. Dropping it does not stop it: it serves until the process exits.
pub struct StatusServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl StatusServer {
    /// Listen on `addr`, install the process-wide Prometheus recorder (so: once per process)
    /// and serve. Until [`StatusServer::set_relay`], `/status` says `starting`.
    pub fn start(addr: SocketAddr) -> Result<StatusServer, StatusError> {
        let listener =
            std::net::TcpListener::bind(addr).map_err(|cause| StatusError::Bind { addr, cause })?;
        let addr = listener
            .local_addr()
            .map_err(|cause| StatusError::Bind { addr, cause })?;
        listener
            .set_nonblocking(true)
            .map_err(|cause| StatusError::Bind { addr, cause })?;
        let prometheus = install_recorder()?;
        crate::metrics::describe();
        let shared = Arc::new(Shared {
            relay: OnceLock::new(),
            prometheus,
            started: Instant::now(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("status-http".into())
            .spawn(move || serve(listener, s))
            .map_err(StatusError::Thread)?;
        Ok(StatusServer { shared, addr })
    }

    /// The relay is running: report on it from now on.
    pub fn set_relay(&self, relay: RelayHandle) {
        let _ = self.shared.relay.set(relay);
    }

    /// The address served (the port chosen when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The recorder with the relay's histogram buckets; its handle renders `/metrics`.
fn install_recorder() -> Result<PrometheusHandle, StatusError> {
    let err = |e: metrics_exporter_prometheus::BuildError| StatusError::Recorder(e.to_string());
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("redis_relay_apply_latency_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .map_err(err)?
        // Fine at the low end: a heartbeat's lag is a fraction of a millisecond when the
        // relay keeps up, and the e2e bench reads its p50/p99 from these buckets.
        .set_buckets_for_metric(
            Matcher::Full("redis_relay_heartbeat_lag_seconds".into()),
            &[
                0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001, 0.0012, 0.0015,
                0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(err)?
        .install_recorder()
        .map_err(err)
}

/// The HTTP thread: accept connections, one task each; the recorder's upkeep beside.
fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("status endpoint: cannot start its runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!("status endpoint: {e}"),
        };
        let upkeep = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP_EVERY).await;
                upkeep.prometheus.run_upkeep();
            }
        });
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("status endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(connection(stream, shared.clone()));
        }
    });
}

/// One HTTP/1 connection.
async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, &req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The response to one request.
fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let relay = shared.relay.get();
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.prometheus.render(),
        ),
        "/status" => {
            let report = StatusReport::of(relay, shared.started.elapsed());
            match serde_json::to_string_pretty(&report) {
                Ok(json) => reply(StatusCode::OK, "application/json", json + "\n"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/healthz" => healthz(relay),
        "/readyz" => {
            let report = StatusReport::of(relay, shared.started.elapsed());
            match report.not_ready() {
                None => text(
                    StatusCode::OK,
                    format!("ready: {} sources in sync\n", report.sources.len()),
                ),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            }
        }
        p => text(
            StatusCode::NOT_FOUND,
            format!("no {p} here: /metrics, /status, /healthz, /readyz\n"),
        ),
    }
}

/// Live while the process answers and the relay's status loop is not stuck.
fn healthz(relay: Option<&RelayHandle>) -> Response<Full<Bytes>> {
    match relay.and_then(|r| r.last_look_age()) {
        Some(age) if age > WEDGED_AFTER => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "status loop stuck: last look {:.0} s ago\n",
                age.as_secs_f64()
            ),
        ),
        _ => text(StatusCode::OK, "ok\n".into()),
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(code, "text/plain; charset=utf-8", body)
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}
