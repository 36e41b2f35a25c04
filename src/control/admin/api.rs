//! The admin routes (README "Admin API") and their JSON. Bodies are read and parsed here
//! rather than by axum's `Json` extractor so that every refusal (wrong content type, too
//! large, bad JSON, an unknown field) is a JSON error like the others.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{middleware, Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{self, BackendSpec};
use crate::control::backends::{AdminState, TableError};
use crate::control::event_loop::Command;
use crate::control::metrics::{self, BackendSample};
use crate::control::reload::ReloadError;

use super::{ApiError, Ctx, BODY_LIMIT, BODY_TIMEOUT};

pub(super) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(super::status::page))
        .route("/status", get(super::status::status))
        .route("/metrics", get(get_metrics))
        .route("/services", get(list_services))
        .route(
            "/services/{service}/backends",
            get(list_service_backends).post(add_service_backend),
        )
        .route(
            "/services/{service}/backends/{name}",
            patch(change_service_backend).delete(remove_service_backend),
        )
        .route("/backends", get(list_backends).post(add_backend))
        .route(
            "/backends/{name}",
            patch(change_backend).delete(remove_backend),
        )
        .route("/reload", post(reload))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            super::require_token,
        ))
        .with_state(ctx)
}

/// One backend in `GET /backends` and in the answers to changes.
#[derive(Debug, Serialize)]
pub(super) struct BackendJson {
    name: String,
    addr: String,
    /// The configured weight (slow start does not show here).
    weight: u32,
    /// `up`, `down`, `draining` or `maint`: what the workers route by.
    state: &'static str,
    /// The health checks' verdict, and not ejected for connect failures.
    healthy: bool,
    /// Used only while no primary backend is up.
    backup: bool,
    active_conns: u64,
    total_conns: u64,
    connect_failures: u64,
}

impl From<&BackendSample> for BackendJson {
    fn from(b: &BackendSample) -> Self {
        BackendJson {
            name: b.status.name.clone(),
            addr: b.status.addr.to_string(),
            weight: b.status.weight,
            state: b.status.state.name(),
            healthy: b.status.healthy && !b.status.ejected,
            backup: b.status.backup,
            active_conns: b.active_conns,
            total_conns: b.total_conns,
            connect_failures: b.connect_failures,
        }
    }
}

/// `POST /backends`. Only `addr` is required: the weight defaults to 1 and the name to
/// the address as written, as with `--backend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    addr: String,
    #[serde(default)]
    weight: Option<u64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    max_conns: Option<u64>,
    /// `"v1"` or `"v2"`: send this backend a PROXY protocol header.
    #[serde(default)]
    proxy_protocol: Option<String>,
    /// A backup backend: used only while no primary is up.
    #[serde(default)]
    backup: bool,
}

/// `PATCH /backends/{name}`: either field or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    weight: Option<u64>,
    #[serde(default)]
    state: Option<String>,
}

async fn get_metrics(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let text = ctx.ask(|reply| Command::Metrics { reply }).await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn list_services(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let all = ctx.ask(|reply| Command::Services { reply }).await?;
    Ok(Json(all).into_response())
}

// The `/services/{service}/...` routes and the old `/backends` ones, which act on the only
// service (409 naming the services when there are several), share their handlers.

async fn list_service_backends(
    State(ctx): State<Ctx>,
    service: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<BackendJson>>, ApiError> {
    backends_of(ctx, Some(path_name(service)?)).await
}

async fn list_backends(State(ctx): State<Ctx>) -> Result<Json<Vec<BackendJson>>, ApiError> {
    backends_of(ctx, None).await
}

async fn backends_of(
    ctx: Ctx,
    service: Option<String>,
) -> Result<Json<Vec<BackendJson>>, ApiError> {
    let all = ctx
        .ask(|reply| Command::Backends { service, reply })
        .await?
        .map_err(table_error)?;
    Ok(Json(all.iter().map(BackendJson::from).collect()))
}

async fn add_service_backend(
    State(ctx): State<Ctx>,
    service: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    add_to(ctx, Some(path_name(service)?), headers, body).await
}

async fn add_backend(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    add_to(ctx, None, headers, body).await
}

async fn add_to(
    ctx: Ctx,
    service: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: NewBackend = read_json(&headers, body).await?;
    let spec = validate_new(req).await?;
    let added = ctx
        .ask(|reply| Command::AddBackend {
            service,
            spec,
            reply,
        })
        .await?
        .map_err(table_error)?;
    Ok((StatusCode::CREATED, Json(BackendJson::from(&added))).into_response())
}

async fn change_service_backend(
    State(ctx): State<Ctx>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BackendJson>, ApiError> {
    let (service, name) = path_pair(path)?;
    change(ctx, Some(service), name, headers, body).await
}

async fn change_backend(
    State(ctx): State<Ctx>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BackendJson>, ApiError> {
    change(ctx, None, path_name(name)?, headers, body).await
}

async fn change(
    ctx: Ctx,
    service: Option<String>,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BackendJson>, ApiError> {
    let req: Change = read_json(&headers, body).await?;
    let (weight, state) = check_change(req)?;
    let changed = ctx
        .ask(|reply| Command::Update {
            service,
            name,
            weight,
            state,
            reply,
        })
        .await?
        .map_err(table_error)?;
    Ok(Json(BackendJson::from(&changed)))
}

/// A `PATCH` body's weight and state, checked; at least one is given.
fn check_change(req: Change) -> Result<(Option<u32>, Option<AdminState>), ApiError> {
    let weight = req.weight.map(check_weight).transpose()?;
    let state = match req.state.as_deref() {
        None => None,
        Some(s @ ("up" | "drain" | "maint")) => AdminState::from_name(s),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown state '{other}'; expected up, drain or maint"
            )))
        }
    };
    if weight.is_none() && state.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give \"weight\" and/or \"state\"",
        ));
    }
    Ok((weight, state))
}

async fn remove_service_backend(
    State(ctx): State<Ctx>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (service, name) = path_pair(path)?;
    remove(ctx, Some(service), name).await
}

async fn remove_backend(
    State(ctx): State<Ctx>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    remove(ctx, None, path_name(name)?).await
}

async fn remove(ctx: Ctx, service: Option<String>, name: String) -> Result<Response, ApiError> {
    // The backend as it starts draining, from the same event as the removal: asked for
    // afterwards, it may be gone already (a drained backend leaves at the next tick).
    let removed = ctx
        .ask(|reply| Command::RemoveBackend {
            service,
            name,
            reply,
        })
        .await?
        .map_err(table_error)?;
    // 202: it drains, and leaves the table once its last connection has closed.
    Ok((StatusCode::ACCEPTED, Json(BackendJson::from(&removed))).into_response())
}

async fn reload(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    match ctx.ask(|reply| Command::Reload { reply }).await? {
        Ok(outcome) => {
            let mut v = serde_json::to_value(&outcome).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("result".into(), "ok".into());
            }
            Ok(Json(v).into_response())
        }
        Err(e @ ReloadError::NoConfigFile) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        // The request was fine; the file on disk is not.
        Err(e @ ReloadError::Config(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("configuration not reloaded, nothing changed: {e}"),
        )),
        // The disk or DNS did not answer in time; trying again later may work.
        // A new listen address is taken: the request was fine, the machine is not ready.
        Err(e @ ReloadError::Listen(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("configuration not reloaded, nothing changed: {e}"),
        )),
        Err(e @ (ReloadError::TimedOut(_) | ReloadError::Aborted(_))) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("configuration not reloaded, nothing changed: {e}"),
        )),
    }
}

async fn health(State(ctx): State<Ctx>) -> Response {
    let accepting = ctx
        .ask(|reply| Command::Health { reply })
        .await
        .unwrap_or(false);
    if accepting {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "stopping" })),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET / (status page), /status, /metrics, /services, /services/SERVICE/backends, /backends, /health, POST /services/SERVICE/backends, /backends, /reload, PATCH and DELETE /services/SERVICE/backends/NAME, /backends/NAME",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

fn path_name(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(n)| n)
        .map_err(|e| ApiError::bad_request(format!("bad name in the path: {e}")))
}

fn path_pair(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    p.map(|Path(pair)| pair)
        .map_err(|e| ApiError::bad_request(format!("bad name in the path: {e}")))
}

fn table_error(e: TableError) -> ApiError {
    let status = match e {
        TableError::Unknown(_) | TableError::UnknownService(_) => StatusCode::NOT_FOUND,
        TableError::Ambiguous(_) => StatusCode::CONFLICT,
        TableError::Removing(_) | TableError::Duplicate(_) => StatusCode::CONFLICT,
        TableError::Full => StatusCode::INSUFFICIENT_STORAGE,
        TableError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

/// A JSON body: `Content-Type: application/json` (which also makes a browser send a CORS
/// preflight, so a web page cannot post to a loopback admin endpoint), at most
/// [`BODY_LIMIT`] bytes, no unknown fields.
async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a JSON body with Content-Type: application/json",
        ));
    }
    // A body trickled in byte by byte would keep the connection busy (and so never
    // replaced by a new one) for as long as the client likes.
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT));
    let bytes: Bytes = read
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_TIMEOUT:?}"),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body too large or cut short (at most {BODY_LIMIT} bytes)"),
            )
        })?;
    parse_body(&bytes)
}

fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn check_weight(w: u64) -> Result<u32, ApiError> {
    config::parse_weight(&w.to_string()).map_err(ApiError::bad_request)
}

/// The same rules as `--backend`. A host name is resolved on the runtime's blocking pool
/// so that the control loop (health checks, other requests) never waits for DNS.
async fn validate_new(req: NewBackend) -> Result<BackendSpec, ApiError> {
    let text = req.addr.trim().to_string();
    let addr = match literal_addr(&text) {
        Some(a) => Ok(a),
        None => {
            let t = text.clone();
            tokio::task::spawn_blocking(move || config::parse_backend_addr(&t))
                .await
                .map_err(|_| ApiError::bad_request("cannot resolve the address"))
                .and_then(|r| r.map_err(invalid_addr))
        }
    };
    check_new(req, text, addr)
}

/// An address that needs no resolving.
fn literal_addr(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

fn invalid_addr(m: String) -> ApiError {
    ApiError::bad_request(format!("invalid addr: {m}"))
}

/// The rest of [`validate_new`] once `addr` (the trimmed `text`) is resolved or refused.
fn check_new(
    req: NewBackend,
    text: String,
    addr: Result<SocketAddr, ApiError>,
) -> Result<BackendSpec, ApiError> {
    let addr = addr?;
    let weight = match req.weight {
        Some(w) => check_weight(w)?,
        None => 1,
    };
    let name = match req.name {
        Some(n) => config::parse_backend_name(&n).map_err(ApiError::bad_request)?,
        None => config::parse_backend_name(&text).map_err(ApiError::bad_request)?,
    };
    let max_conns = match req.max_conns {
        None => None,
        Some(n) => match u32::try_from(n) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "max_conns must be an integer from 1 to {}, got {n}",
                    u32::MAX
                )))
            }
        },
    };
    let proxy_protocol = match req.proxy_protocol {
        None => None,
        Some(v) => Some(
            config::parse_proxy_protocol(&v)
                .map_err(|e| ApiError::bad_request(format!("proxy_protocol: {e}")))?,
        ),
    };
    Ok(BackendSpec {
        addr,
        weight,
        name,
        max_conns,
        proxy_protocol,
        backup: req.backup,
    })
}

/// `POST /backends`'s body to the backend it adds, or the 400 answer's message. As the
/// handler, but resolving a host name on this thread: for fuzzing.
pub fn parse_add_backend(body: &[u8]) -> Result<BackendSpec, String> {
    let req: NewBackend = parse_body(body).map_err(|e| e.message)?;
    let text = req.addr.trim().to_string();
    let addr = match literal_addr(&text) {
        Some(a) => Ok(a),
        None => config::parse_backend_addr(&text).map_err(invalid_addr),
    };
    check_new(req, text, addr).map_err(|e| e.message)
}

/// `PATCH /backends/{name}`'s body to its (weight, state), or the 400 answer's message.
pub fn parse_patch(body: &[u8]) -> Result<(Option<u32>, Option<AdminState>), String> {
    let req: Change = parse_body(body).map_err(|e| e.message)?;
    check_change(req).map_err(|e| e.message)
}
