//! Operator endpoints, on their own listener (loopback by default): the
//! ledger export for settlement, the ledger check, and drain.
//!
//! Owns these handlers and who may call them. They are never routed on
//! the public listener: the export lists every account's receipts. The
//! probes (`/live`, `/ready`, `/metrics`) are served here as well, for a
//! local scraper.
//!
//! Who may call them (`Access`), checked on every path before anything
//! else:
//!
//! * with a token ([`crate::HostConfig::admin_token`], required when the
//!   listener is not on loopback): every request carries
//!   `Authorization: Bearer <token>`, compared in constant time; else
//!   `401` with `WWW-Authenticate: Bearer`;
//! * without one (loopback only): the `Host` header names a loopback
//!   address or `localhost`; else `421`. A web page the operator visits
//!   cannot reach the API by making its own name resolve to `127.0.0.1`
//!   (DNS rebinding), and it can send no token.
//!
//! * `GET /admin/ledger/export?after=N&limit=M`: NDJSON, one entry per
//!   line (`ledger_seq`, `request_id`, `account`, `model`, token counts,
//!   `prompt_price`, `completion_price`, `enclave_seq`, `time`, `receipt`
//!   and `receipt_public_key` in hex), oldest first; page with `after`.
//! * `GET /admin/ledger/check`: JSON counts and the duplicate check; `200`
//!   when sound, `500` otherwise.
//! * `POST /admin/drain`: start the drain (as on SIGTERM); `202`.
//! * `GET /admin/timings?after=N`: NDJSON, one line per completed
//!   request among the last [`crate::timings::KEPT`], oldest first: `seq`
//!   (page with `after`), nanoseconds per stage of the host (`http_ns`,
//!   `account_ns`, … see [`crate::timings`]) and `total_ns`. Durations
//!   only: no request id, account or model.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cocoon_protocol::local_auth::{AllowedHosts, BearerToken};
use serde::Deserialize;
use tracing::{info, warn};

use crate::http::{not_found, probes, text};
use crate::App;

/// Export path.
pub const EXPORT_PATH: &str = "/admin/ledger/export";
/// Check path.
pub const CHECK_PATH: &str = "/admin/ledger/check";
/// Drain path.
pub const DRAIN_PATH: &str = "/admin/drain";
/// Timings path.
pub const TIMINGS_PATH: &str = "/admin/timings";
/// Default rows per export page.
pub const DEFAULT_EXPORT_LIMIT: usize = 10_000;
/// Most rows per export page.
pub const MAX_EXPORT_LIMIT: usize = 100_000;

/// What an operator request must show.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// `Authorization: Bearer <token>`.
    Token(BearerToken),
    /// A loopback `Host` (the listener is on loopback).
    LocalHost(AllowedHosts),
}

impl Access {
    pub(crate) fn new(token: Option<BearerToken>, listen: SocketAddr) -> Access {
        match token {
            Some(t) => Access::Token(t),
            None => Access::LocalHost(AllowedHosts::loopback().with(&listen.ip().to_string())),
        }
    }

    fn refusal(&self, req: &Request) -> Option<Response> {
        let header_of = |name| req.headers().get(name).map(HeaderValue::as_bytes);
        match self {
            Access::Token(t) if !t.authorizes(header_of(header::AUTHORIZATION)) => {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "the operator API needs its token: Authorization: Bearer <the token in --admin-token-file>",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(r)
            }
            Access::LocalHost(hosts) if !hosts.permits(header_of(header::HOST)) => Some(text(
                StatusCode::MISDIRECTED_REQUEST,
                "the operator API answers only requests for 127.0.0.1, [::1] or localhost",
            )),
            _ => None,
        }
    }
}

async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match app.admin_access.refusal(&req) {
        Some(r) => {
            warn!(
                path = req.uri().path(),
                status = r.status().as_u16(),
                "operator request refused"
            );
            r
        }
        None => next.run(req).await,
    }
}

/// The operator router, every path behind [`Access`].
pub(crate) fn router(app: Arc<App>) -> Router {
    probes(Router::new())
        .route(EXPORT_PATH, get(export))
        .route(CHECK_PATH, get(check))
        .route(DRAIN_PATH, post(drain))
        .route(TIMINGS_PATH, get(timings))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
struct TimingsQuery {
    #[serde(default)]
    after: u64,
}

async fn timings(
    State(app): State<Arc<App>>,
    query: Result<Query<TimingsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad query: {}", e.body_text()),
            )
        }
    };
    let samples = app.timings.after(q.after);
    ndjson(samples.iter().map(|s| s.to_json_line()))
}

/// One JSON object a line (`application/x-ndjson`), 200.
fn ndjson(lines: impl Iterator<Item = String>) -> Response {
    let mut body = String::new();
    for line in lines {
        body.push_str(&line);
        body.push('\n');
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn export(
    State(app): State<Arc<App>>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad query: {}", e.body_text()),
            )
        }
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_EXPORT_LIMIT)
        .min(MAX_EXPORT_LIMIT);
    match app.ledger.export(q.after, limit).await {
        Ok(rows) => ndjson(rows.iter().map(|r| r.to_json_line())),
        Err(e) => {
            warn!(error = %e, "ledger export failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

async fn check(State(app): State<Arc<App>>) -> Response {
    match app.ledger.check().await {
        Ok(c) => {
            let status = if c.is_ok() {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                c.to_json(),
            )
                .into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn drain(State(app): State<Arc<App>>) -> Response {
    info!("drain requested on the admin endpoint");
    app.begin_drain();
    text(StatusCode::ACCEPTED, "draining")
}
