//! Operator endpoints, on their own listener (loopback by default): the
//! ledger export for settlement, the ledger check, and drain.
//!
//! Owns only these handlers. They are never routed on the public listener:
//! the export lists every account's receipts. The probes (`/live`,
//! `/ready`, `/metrics`) are served here as well, for a local scraper.
//!
//! * `GET /admin/ledger/export?after=N&limit=M`: NDJSON, one entry per
//!   line (`ledger_seq`, `request_id`, `account`, `model`, token counts,
//!   `prompt_price`, `completion_price`, `enclave_seq`, `time`, `receipt`
//!   and `receipt_public_key` in hex), oldest first; page with `after`.
//! * `GET /admin/ledger/check`: JSON counts and the duplicate check; `200`
//!   when sound, `500` otherwise.
//! * `POST /admin/drain`: start the drain (as on SIGTERM); `202`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
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
/// Default rows per export page.
pub const DEFAULT_EXPORT_LIMIT: usize = 10_000;
/// Most rows per export page.
pub const MAX_EXPORT_LIMIT: usize = 100_000;

/// The operator router.
pub(crate) fn router(app: Arc<App>) -> Router {
    probes(Router::new())
        .route(EXPORT_PATH, get(export))
        .route(CHECK_PATH, get(check))
        .route(DRAIN_PATH, post(drain))
        .fallback(not_found)
        .with_state(app)
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
        Ok(rows) => {
            let mut body = String::with_capacity(rows.len() * 600);
            for r in &rows {
                body.push_str(&r.to_json_line());
                body.push('\n');
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                body,
            )
                .into_response()
        }
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
