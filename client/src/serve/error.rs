//! OpenAI-shaped errors: every error the endpoint answers is
//! `{"error": {"message", "type", "param", "code"}}` with a status that says
//! whose problem it is. A problem with the request (a refused parameter,
//! a prompt over the model's context, the wrong kind of model, an unknown
//! model) is a 4xx, so OpenAI clients do not retry it; only a provider
//! failure is a 5xx. Owns [`ApiErr`] and the mapping of SDK errors and of
//! the enclave's refusal codes to it.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cocoon_protocol::message::{FinishReason, RefusalCode};
use serde_json::{json, Value};

use crate::client::ClientError;
use crate::network::NetworkError;
use crate::response::Completed;

/// An OpenAI-style error.
#[derive(Debug)]
pub(crate) struct ApiErr {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) code: &'static str,
    pub(crate) param: Option<String>,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
}

impl ApiErr {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiErr {
        ApiErr {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> ApiErr {
        ApiErr::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// A `400` about one parameter.
    pub(crate) fn bad_param(code: &'static str, param: &str, message: impl Into<String>) -> ApiErr {
        ApiErr::bad_request(code, message).with_param(param)
    }

    pub(crate) fn with_param(mut self, param: &str) -> ApiErr {
        self.param = Some(param.to_owned());
        self
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    /// The enclave's end of a refused or failed response; `None` for an
    /// answer.
    pub(crate) fn from_finish(finish: &FinishReason) -> Option<ApiErr> {
        match finish {
            FinishReason::Refused { code, message } => Some(refusal(*code, message)),
            FinishReason::Failed(m) => Some(ApiErr::new(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "provider_failed",
                format!("the provider failed while serving the request (nothing was charged; a retry is billed once): {m}"),
            )),
            _ => None,
        }
    }

    pub(crate) fn from_completed(c: &Completed) -> Option<ApiErr> {
        ApiErr::from_finish(&c.finish)
    }
}

/// An enclave refusal as OpenAI answers the same problem.
pub(crate) fn refusal(code: RefusalCode, message: &str) -> ApiErr {
    let message = format!("{message} (refused before running the model; nothing was charged)");
    match code {
        RefusalCode::ContextLengthExceeded => {
            ApiErr::bad_param("context_length_exceeded", "messages", message)
        }
        RefusalCode::ModelNotFound => ApiErr::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            message,
        )
        .with_param("model"),
        RefusalCode::ModelKindMismatch => {
            ApiErr::bad_param("model_kind_mismatch", "model", message)
        }
        RefusalCode::InvalidMaxTokens => ApiErr::bad_param("invalid_value", "max_tokens", message),
        _ => ApiErr::bad_request("invalid_request", message),
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let mut r = json_response(self.status, &self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer the framework made (body too large, wrong method, a
/// body that is not valid UTF-8 ...) in OpenAI's shape; any other answer
/// unchanged.
pub(crate) fn openai_shaped(r: Response) -> Response {
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (kind, code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "invalid_request_error",
            "request_too_large",
            "the request body is larger than this endpoint accepts".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request_error",
            "method_not_allowed",
            "this path does not take that method (GET /v1/models, POST /v1/chat/completions, POST /v1/embeddings)".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid_request_error",
            "unsupported_media_type",
            "a POST body must be sent with Content-Type: application/json".to_owned(),
        ),
        s if s.is_client_error() => (
            "invalid_request_error",
            "invalid_request",
            format!("the request was refused ({s})"),
        ),
        s => ("server_error", "server_error", format!("internal error ({s})")),
    };
    let mut out = ApiErr::new(status, kind, code, message).into_response();
    if let Some(allow) = r.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

impl From<ClientError> for ApiErr {
    fn from(e: ClientError) -> ApiErr {
        let message = e.to_string();
        if let ClientError::EnclaveFailed { completed, .. } = &e {
            if let Some(a) = ApiErr::from_completed(completed) {
                return a;
            }
        }
        let (status, kind, code) = match &e {
            ClientError::Verification(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_not_verified",
                "attestation_failed",
            ),
            ClientError::EvidenceUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_not_verified",
                "evidence_unavailable",
            ),
            ClientError::ModelNotServed { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            ClientError::InvalidRequest(_) | ClientError::Seal(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            ClientError::OverPrice { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "over_price_limit",
            ),
            ClientError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
            ),
            ClientError::Status { status: 402, .. } => (
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "payment_required",
            ),
            ClientError::Status { status: 413, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
            ),
            ClientError::Unreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "provider_unreachable",
            ),
            ClientError::Response(_) => (
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "response_verification_failed",
            ),
            ClientError::EnclaveFailed { .. } => {
                (StatusCode::BAD_GATEWAY, "provider_error", "enclave_error")
            }
            _ => (StatusCode::BAD_GATEWAY, "provider_error", "provider_error"),
        };
        let retry_after = match &e {
            ClientError::RateLimited { retry_after, .. } => retry_after.map(|d| d.as_secs()),
            _ => None,
        };
        let param = match &e {
            ClientError::ModelNotServed { .. } => Some("model".to_owned()),
            ClientError::OverPrice { .. } => Some("max_tokens".to_owned()),
            _ => None,
        };
        ApiErr {
            status,
            kind,
            code,
            param,
            message,
            retry_after,
        }
    }
}

impl From<NetworkError> for ApiErr {
    fn from(e: NetworkError) -> ApiErr {
        let message = e.to_string();
        match e {
            NetworkError::Refused { source, .. } | NetworkError::AnswerFailed { source, .. } => {
                let mut a = ApiErr::from(source);
                a.message = message;
                a
            }
            NetworkError::NoProvider { .. } => ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_not_verified",
                "no_provider",
                message,
            ),
            NetworkError::AllFailed { .. } => ApiErr::new(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "all_providers_failed",
                message,
            ),
            NetworkError::Directory(_) => ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_not_verified",
                "directory_unavailable",
                message,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_client_errors_and_failures_are_provider_errors() {
        for code in RefusalCode::ALL {
            let e = ApiErr::from_finish(&FinishReason::Refused {
                code,
                message: "why".into(),
            })
            .unwrap();
            assert!(e.status.is_client_error(), "{code}: {:?}", e.status);
            assert_eq!(e.kind, "invalid_request_error", "{code}");
            let v = e.body();
            assert!(v["error"]["message"].as_str().unwrap().contains("why"));
        }
        let ctx = ApiErr::from_finish(&FinishReason::Refused {
            code: RefusalCode::ContextLengthExceeded,
            message: "too long".into(),
        })
        .unwrap();
        assert_eq!(
            (ctx.status.as_u16(), ctx.code),
            (400, "context_length_exceeded")
        );
        let nf = ApiErr::from_finish(&FinishReason::Refused {
            code: RefusalCode::ModelNotFound,
            message: "no".into(),
        })
        .unwrap();
        assert_eq!((nf.status.as_u16(), nf.code), (404, "model_not_found"));
        let failed = ApiErr::from_finish(&FinishReason::Failed("device lost".into())).unwrap();
        assert!(failed.status.is_server_error());
        assert_eq!(failed.kind, "provider_error");
        assert!(ApiErr::from_finish(&FinishReason::Stop).is_none());
        assert!(ApiErr::from_finish(&FinishReason::Length).is_none());
    }

    #[test]
    fn host_statuses_keep_their_meaning() {
        let e = ApiErr::from(ClientError::Status {
            status: 402,
            reason: "deposit".into(),
        });
        assert_eq!((e.status.as_u16(), e.kind), (402, "insufficient_quota"));
        let e = ApiErr::from(ClientError::RateLimited {
            reason: "slow down".into(),
            retry_after: Some(std::time::Duration::from_secs(3)),
        });
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(3)));
        let e = ApiErr::from(ClientError::OverPrice {
            worst_case: 10,
            limit: 1,
        });
        assert_eq!(e.status.as_u16(), 400);
    }

    #[test]
    fn framework_errors_become_openai_shaped() {
        for status in [
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::BAD_REQUEST,
        ] {
            let mut r = Response::new(Body::from("plain text"));
            *r.status_mut() = status;
            let r = openai_shaped(r);
            assert_eq!(r.status(), status);
            assert_eq!(
                r.headers().get(header::CONTENT_TYPE).unwrap(),
                "application/json"
            );
        }
    }
}
