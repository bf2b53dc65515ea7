//! The server's wire format: request and response bodies (TEI's and OpenAI's shapes) and the one
//! error body every failure answers with, `{"error", "error_type"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// One text or several (`"inputs": "a"` or `"inputs": ["a", "b"]`).
#[derive(Debug, Clone)]
pub enum Inputs {
    /// A single text: answered without the outer list where TEI does so (`/predict`).
    One(String),
    /// Several texts, answered in order.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Inputs;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a text or a list of texts")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Inputs, E> {
                Ok(Inputs::One(v.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Inputs, A::Error> {
                let mut texts = Vec::new();
                while let Some(t) = seq.next_element::<String>()? {
                    texts.push(t);
                }
                Ok(Inputs::Many(texts))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Inputs {
    /// The texts, in order.
    pub fn into_texts(self) -> Vec<String> {
        match self {
            Self::One(t) => vec![t],
            Self::Many(ts) => ts,
        }
    }
}

/// `POST /embed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// The texts.
    pub inputs: Inputs,
    /// An adapter name or a setup expression; none: the plain backbone.
    #[serde(default)]
    pub setup: Option<String>,
    /// Scale each embedding to unit length (TEI's default: true).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Cut texts longer than the model's limit instead of refusing them.
    #[serde(default)]
    pub truncate: bool,
}

fn yes() -> bool {
    true
}

/// `POST /predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The texts.
    pub inputs: Inputs,
    /// An adapter name or a setup expression whose head predicts.
    pub setup: String,
    /// The head's logits instead of probabilities.
    #[serde(default)]
    pub raw_scores: bool,
    /// Cut texts longer than the model's limit instead of refusing them.
    #[serde(default)]
    pub truncate: bool,
}

/// `POST /fusion_attention`: what the page draws for a fusion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionRequest {
    /// The texts.
    pub inputs: Inputs,
    /// A setup with a `Fuse(…)`.
    pub setup: String,
    /// Cut texts longer than the model's limit instead of refusing them.
    #[serde(default)]
    pub truncate: bool,
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Debug, Deserialize)]
pub struct OpenAiRequest {
    /// The texts.
    pub input: Inputs,
    /// The setup; the served model's name (or none) for the plain backbone.
    #[serde(default)]
    pub model: Option<String>,
    /// Only `float` is served.
    #[serde(default)]
    pub encoding_format: Option<String>,
}

/// One label's score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelScore {
    /// The label's name (`LABEL_i` where the head names none).
    pub label: String,
    /// Its probability (or logit, with `raw_scores`).
    pub score: f32,
}

/// `POST /predict`'s answer: a list for one text, a list per text for several (as TEI).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PredictResponse {
    /// For `"inputs": "text"`.
    One(Vec<LabelScore>),
    /// For `"inputs": [...]`.
    Many(Vec<Vec<LabelScore>>),
}

/// The mean fusion attention of some texts: one row per fusion layer, one column per adapter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttentionMap {
    /// The fused adapters (columns).
    pub adapters: Vec<String>,
    /// `layer L FFN` / `layer L attention` (rows, bottom layer first).
    pub layers: Vec<String>,
    /// `[layer][adapter]`, the attention averaged over the texts' real tokens.
    pub values: Vec<Vec<f32>>,
}

/// One embedding of `POST /v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    pub object: &'static str,
    /// The vector.
    pub embedding: Vec<f32>,
    /// Its input's position.
    pub index: usize,
}

/// Token counts of `POST /v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Tokens read.
    pub prompt_tokens: usize,
    /// The same: nothing is generated.
    pub total_tokens: usize,
}

/// `POST /v1/embeddings`' answer.
#[derive(Debug, Serialize)]
pub struct OpenAiResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One per input.
    pub data: Vec<OpenAiEmbedding>,
    /// The setup (or model) asked for.
    pub model: String,
    /// Tokens read.
    pub usage: Usage,
}

/// `POST /adapters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// The adapter folder, relative to `--adapters-dir` (or absolute inside it).
    pub path: String,
    /// The name to serve it under (default: the name it was saved with).
    #[serde(default)]
    pub name: Option<String>,
}

/// A failure, answered as `{"error": message, "error_type": kind}` with its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable name for the kind of failure (`validation`, `not_found`, `overloaded`, …).
    pub kind: &'static str,
    /// What went wrong, in one line, naming the field or name at fault.
    pub message: String,
    /// Seconds to wait before retrying (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 422: the request is well-formed HTTP but its content is not acceptable.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    /// 404: an unknown adapter, fusion or route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 429: the queue is full.
    pub fn overloaded(limit: usize) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!("{limit} requests are already queued or running (--max-concurrent): retry later"),
            )
        }
    }

    /// 401: a missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (send `Authorization: Bearer KEY`)",
        )
    }

    /// 413: the body is over `--payload-limit`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over {limit} bytes (--payload-limit)"),
        )
    }

    /// 403: something the server's settings do not allow.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409: a name already taken, or an adapter in use.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 405: the route exists with other methods.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    /// 503: the server is shutting down or its model thread is gone.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", message)
    }

    /// 500: the model failed on a request it accepted.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "backend", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "error_type": self.kind });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
