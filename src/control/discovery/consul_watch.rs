//! The I/O half of Consul discovery: a task on the control thread's runtime that follows
//! `/v1/health/service/SERVICE?passing=true` with blocking queries (hyper, one kept-alive
//! HTTP/1.1 connection) and sends every changed answer to the control loop.
//!
//! - A blocking query returns as soon as Consul's index for the answer moves past the one
//!   sent, so a change is followed at once; consecutive queries start at least
//!   [`MIN_GAP`] apart, whatever index Consul answers with.
//! - An error (connect, timeout, status other than 200, a body that is not the documented
//!   JSON, an empty list of passing instances) sends nothing, so the last good set stays;
//!   retries back off from [`FIRST_BACKOFF`], doubling up to `--discovery-interval`, and
//!   the next query after an error starts from index 0 (a restarted Consul may have an
//!   older index: a blocking query from ours would wait the whole `wait`).

use std::collections::HashSet;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

use crate::config::{ConsulSource, ConsulToken};

use super::consul::{candidates, next_index};
use super::records::Candidate;
use super::resolve::failed_to;
use super::{DISCOVERED, RESOLUTIONS};

/// `wait` of each blocking query; Consul adds up to wait/16 of jitter.
pub const WAIT: Duration = Duration::from_secs(30);
/// Consecutive queries start at least this far apart (a flapping service or an index that
/// does not move costs at most a few queries a second).
pub const MIN_GAP: Duration = Duration::from_millis(200);
/// The first retry after an error.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Connecting to Consul.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond `wait` and its jitter, how long an answer may take.
const ANSWER_SLACK: Duration = Duration::from_secs(10);
/// The largest answer read (about 1 KiB per instance in Consul's format).
pub const MAX_BODY: usize = 16 << 20;

/// One successful query.
struct Answer {
    index: Option<u64>,
    body: Vec<u8>,
}

/// The kept-alive connection to Consul.
struct Conn {
    sender: SendRequest<String>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(source: &ConsulSource) -> Result<Conn, String> {
    let stream = timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((source.host.as_str(), source.port)),
    )
    .await
    .map_err(|_| format!("connecting took more than {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender, task })
}

/// One query on `conn`: `index` 0 is an immediate read.
async fn query(
    conn: &mut Conn,
    source: &ConsulSource,
    token: Option<&ConsulToken>,
    index: u64,
) -> Result<Answer, String> {
    let mut path = format!("/v1/health/service/{}?passing=true", source.service);
    if index > 0 {
        path += &format!("&index={index}&wait={}s", WAIT.as_secs());
    }
    let mut req = Request::get(path).header("Host", source.authority());
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t.expose());
    }
    let req = req
        .body(String::new())
        .map_err(|e| format!("building the request: {e}"))?;
    conn.sender
        .ready()
        .await
        .map_err(|e| format!("connection lost: {e}"))?;
    let resp = conn
        .sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(format!("answer larger than {MAX_BODY} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&out[..out.len().min(200)])
            .trim()
            .to_string();
        let hint = if status == StatusCode::FORBIDDEN {
            " (check consul_token or CONSUL_HTTP_TOKEN)"
        } else {
            ""
        };
        return Err(format!("HTTP {status}{hint}: {text}"));
    }
    Ok(Answer { index, body: out })
}

/// Follows `source` until the receiver goes away (the control loop ended).
pub async fn run(
    source: ConsulSource,
    token: Option<ConsulToken>,
    max_backoff: Duration,
    tx: UnboundedSender<Vec<Candidate>>,
) {
    let label = format!(
        "Consul service {} at {}",
        source.service,
        source.authority()
    );
    let mut conn: Option<Conn> = None;
    let mut index: u64 = 0;
    let mut last: Option<Vec<Candidate>> = None;
    let mut streak: u64 = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut logged: HashSet<String> = HashSet::new();
    let mut next_start = Instant::now();
    while !tx.is_closed() {
        sleep_until(next_start).await;
        next_start = Instant::now() + MIN_GAP;
        let result = async {
            if conn.is_none() {
                conn = Some(connect(&source).await?);
            }
            let c = conn.as_mut().ok_or("no connection")?;
            let limit = WAIT + WAIT / 16 + ANSWER_SLACK;
            timeout(limit, query(c, &source, token.as_ref(), index))
                .await
                .map_err(|_| format!("no answer within {limit:?}"))?
        }
        .await;
        let outcome = result.and_then(|a| {
            let (found, problems) = candidates(&a.body)?;
            Ok((a.index, found, problems))
        });
        let (answered, found, problems) = match outcome {
            Ok(v) => v,
            Err(e) => {
                conn = None;
                index = 0;
                failed_to("following", &mut streak, &label, &e, last.as_ref());
                next_start = Instant::now() + backoff;
                backoff = (backoff * 2).min(max_backoff.max(FIRST_BACKOFF));
                continue;
            }
        };
        index = next_index(index, answered);
        let now: HashSet<String> = problems.iter().cloned().collect();
        for p in problems.iter().filter(|p| !logged.contains(*p)) {
            tracing::warn!("discovery: {label}: {p}");
        }
        logged = now;
        if found.is_empty() {
            // Consul says no instance passes (or none is usable): keep the last set, as
            // for a DNS answer without records; the balancer's own checks still apply.
            failed_to(
                "following",
                &mut streak,
                &label,
                "no passing instance",
                last.as_ref(),
            );
            continue;
        }
        RESOLUTIONS.fetch_add(1, Ordering::Relaxed);
        backoff = FIRST_BACKOFF;
        if streak > 0 {
            tracing::info!("discovery: {label} answers again after {streak} failure(s)");
            streak = 0;
        }
        if last.as_ref() != Some(&found) {
            tracing::info!(
                "discovery: {label}: {} backend(s): {}",
                found.len(),
                super::resolve::describe(&found)
            );
            DISCOVERED.store(found.len() as u64, Ordering::Relaxed);
            if tx.send(found.clone()).is_err() {
                return;
            }
            last = Some(found);
        }
    }
}
