//! HTTP routing: axum handlers that validate a request (body, setup, limits, key), queue it for
//! the model thread and answer its reply, counting every answer in the metrics.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sinew::backbone::TextTokenizer;
use sinew::fusion::Setup;
use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, Semaphore};

use super::api::{
    ApiError, AttentionRequest, EmbedRequest, LoadRequest, OpenAiEmbedding, OpenAiRequest,
    OpenAiResponse, PredictRequest, PredictResponse, Usage,
};
use super::metrics::{Metrics, RequestLabels};
use super::queue::{Limits, Reply, Request as Queued, Task};
use super::worker::{Catalog, Command};

/// What `GET /info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The model folder's name.
    pub model_id: String,
    /// The model folder.
    pub model_dir: PathBuf,
    /// The Burn backend.
    pub backend: String,
    /// sinew's version.
    pub version: &'static str,
    /// Longest input in tokens.
    pub max_input_length: usize,
    /// Texts per forward pass at most.
    pub max_batch_requests: usize,
    /// Padded tokens per forward pass at most.
    pub max_batch_tokens: usize,
    /// Milliseconds a request waits for company.
    pub max_wait_ms: u64,
    /// Requests queued or running at most (more get 429).
    pub max_concurrent: usize,
    /// Adapters in memory at most (`null`: no limit).
    pub max_adapters: Option<usize>,
    /// Largest request body in bytes.
    pub payload_limit: usize,
    /// Whether requests need `Authorization: Bearer KEY`.
    pub auth: bool,
}

/// Everything the handlers share.
pub struct AppState {
    /// Commands to the model thread.
    pub commands: Sender<Command>,
    /// False once the model thread has stopped.
    pub alive: Arc<AtomicBool>,
    /// What is served.
    pub catalog: Arc<RwLock<Catalog>>,
    /// Tokenizes requests to check their lengths before they queue.
    pub tokenizer: TextTokenizer,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// One permit per request queued or running.
    pub permits: Arc<Semaphore>,
    /// SHA-256 of the API key, when one is required.
    pub key_digest: Option<[u8; 32]>,
    /// Where `POST /adapters` may load from (canonical).
    pub adapters_dir: Option<PathBuf>,
    /// Batching limits (a request must fit in one batch).
    pub limits: Limits,
    /// `GET /info`.
    pub info: Info,
}

type Shared = Arc<AppState>;

/// The routes: the API behind the key (when one is set), the page and `/health` open.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/embed", post(embed))
        .route("/predict", post(predict))
        .route("/fusion_attention", post(fusion_attention))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/adapters", get(list_adapters).post(load_adapter))
        .route("/adapters/{name}", delete(unload_adapter))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(state.info.payload_limit))
        .with_state(state)
}

/// A JSON body parsed with errors that name the field at fault (`inputs[1]: invalid type …`);
/// any content type is read as JSON.
pub struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<Shared> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(state.info.payload_limit)
            } else {
                ApiError::validation(format!("body: {}", e.body_text()))
            }
        })?;
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(&mut json) {
            Ok(value) => Ok(Self(value)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                Err(ApiError::validation(
                    if path == "." || inner.is_syntax() || inner.is_eof() {
                        format!("body: {inner}")
                    } else {
                        format!("{path}: {inner}")
                    },
                ))
            }
        }
    }
}

async fn auth(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.key_digest {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests of equal length, compared in constant time: neither the key nor its length leaks.
        let digest = Sha256::digest(given.as_bytes());
        if !bool::from(digest.as_slice().ct_eq(expected)) {
            let labels = RequestLabels {
                endpoint: request.uri().path().to_string(),
                setup: "-".into(),
                status: 401,
            };
            state.metrics.answered(labels, 0.0);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

impl AppState {
    /// Counts the answer and turns it into a response.
    fn finish(
        &self,
        endpoint: &str,
        setup: &str,
        started: Instant,
        result: Result<Response, ApiError>,
    ) -> Response {
        let response = result.unwrap_or_else(IntoResponse::into_response);
        let labels = RequestLabels {
            endpoint: endpoint.to_string(),
            setup: setup.to_string(),
            status: response.status().as_u16(),
        };
        self.metrics
            .answered(labels, started.elapsed().as_secs_f64());
        response
    }

    /// Checks the texts and returns them with their longest token count and total tokens.
    fn texts(
        &self,
        texts: Vec<String>,
        truncate: bool,
    ) -> Result<(Vec<String>, usize, usize), ApiError> {
        if texts.is_empty() {
            return Err(ApiError::validation(
                "inputs: empty (send a text or a list of texts)",
            ));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(ApiError::validation(format!("inputs[{i}]: an empty text")));
        }
        let cap = self.limits.max_batch_requests;
        if texts.len() > cap {
            return Err(ApiError::validation(format!(
                "inputs: {} texts, at most {cap} per request (--max-batch-requests)",
                texts.len()
            )));
        }
        let tokens = self
            .tokenizer
            .encode(&texts)
            .map_err(|e| ApiError::validation(format!("inputs: {e}")))?;
        if let (false, Some(&i)) = (truncate, tokens.truncated.first()) {
            return Err(ApiError::validation(format!(
                "inputs[{i}]: longer than the model's {} tokens (send \"truncate\": true to cut it)",
                self.tokenizer.max_len()
            )));
        }
        let lengths: Vec<usize> = tokens
            .attention_mask
            .iter()
            .map(|m| m.iter().filter(|&&k| k == 1).count())
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let padded = texts.len() * longest;
        if padded > self.limits.max_batch_tokens {
            return Err(ApiError::validation(format!(
                "inputs: {} texts × {longest} tokens = {padded}, over the {} of a batch (--max-batch-tokens)",
                texts.len(),
                self.limits.max_batch_tokens
            )));
        }
        Ok((texts, longest, lengths.iter().sum()))
    }

    /// Parses and checks a setup expression (`setup_label` gets its canonical form).
    fn setup(&self, text: &str, setup_label: &mut String) -> Result<Setup, ApiError> {
        let setup = Setup::parse(text).map_err(|e| ApiError::validation(format!("setup: {e}")))?;
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(&setup)?;
        *setup_label = setup.to_string();
        Ok(setup)
    }

    /// Queues a request (429 when `--max-concurrent` are already in) and waits for its reply.
    async fn run(
        &self,
        setup: Option<Setup>,
        task: Task,
        texts: Vec<String>,
        longest: usize,
    ) -> Result<Reply, ApiError> {
        let _permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded(self.info.max_concurrent))?;
        let (respond, reply) = oneshot::channel();
        let request = Queued {
            setup,
            task,
            texts,
            longest,
            respond,
            arrived: Instant::now(),
        };
        self.commands
            .send(Command::Run(request))
            .map_err(|_| ApiError::unavailable("the model thread has stopped"))?;
        // If the client hangs up, this future is dropped with `reply`: the queue then skips it.
        reply
            .await
            .map_err(|_| ApiError::unavailable("the model thread has stopped"))?
    }
}

async fn embed(
    State(state): State<Shared>,
    body: Result<JsonBody<EmbedRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let mut label = "-".to_string();
    let result = async {
        let JsonBody(req) = body?;
        let setup = req
            .setup
            .as_deref()
            .map(|s| state.setup(s, &mut label))
            .transpose()?;
        let (texts, longest, _) = state.texts(req.inputs.into_texts(), req.truncate)?;
        let task = Task::Embed {
            normalize: req.normalize,
        };
        match state.run(setup, task, texts, longest).await? {
            Reply::Embeddings(rows) => Ok(Json(rows).into_response()),
            other => Err(ApiError::backend(format!("unexpected reply {other:?}"))),
        }
    }
    .await;
    state.finish("/embed", &label, started, result)
}

async fn predict(
    State(state): State<Shared>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let mut label = "-".to_string();
    let result = async {
        let JsonBody(req) = body?;
        let setup = state.setup(&req.setup, &mut label)?;
        state
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .head(&setup)?;
        let one = matches!(req.inputs, super::api::Inputs::One(_));
        let (texts, longest, _) = state.texts(req.inputs.into_texts(), req.truncate)?;
        let task = Task::Predict {
            raw_scores: req.raw_scores,
        };
        match state.run(Some(setup), task, texts, longest).await? {
            Reply::Predictions(mut rows) if one && rows.len() == 1 => {
                Ok(Json(PredictResponse::One(rows.remove(0))).into_response())
            }
            Reply::Predictions(rows) => Ok(Json(PredictResponse::Many(rows)).into_response()),
            other => Err(ApiError::backend(format!("unexpected reply {other:?}"))),
        }
    }
    .await;
    state.finish("/predict", &label, started, result)
}

async fn fusion_attention(
    State(state): State<Shared>,
    body: Result<JsonBody<AttentionRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let mut label = "-".to_string();
    let result = async {
        let JsonBody(req) = body?;
        let setup = state.setup(&req.setup, &mut label)?;
        let (texts, longest, _) = state.texts(req.inputs.into_texts(), req.truncate)?;
        match state
            .run(Some(setup), Task::Attention, texts, longest)
            .await?
        {
            Reply::Attention(map) => Ok(Json(map).into_response()),
            other => Err(ApiError::backend(format!("unexpected reply {other:?}"))),
        }
    }
    .await;
    state.finish("/fusion_attention", &label, started, result)
}

async fn openai_embeddings(
    State(state): State<Shared>,
    body: Result<JsonBody<OpenAiRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let mut label = "-".to_string();
    let result = async {
        let JsonBody(req) = body?;
        if let Some(format) = req.encoding_format.as_deref().filter(|f| *f != "float") {
            return Err(ApiError::validation(format!(
                "encoding_format: `{format}` is not served (only `float`)"
            )));
        }
        let model = req.model.clone().unwrap_or_default();
        let setup = if model.is_empty() || model == state.info.model_id {
            None
        } else {
            Some(state.setup(&model, &mut label)?)
        };
        let (texts, longest, tokens) = state.texts(req.input.into_texts(), false)?;
        match state
            .run(setup, Task::Embed { normalize: true }, texts, longest)
            .await?
        {
            Reply::Embeddings(rows) => Ok(Json(OpenAiResponse {
                object: "list",
                data: rows
                    .into_iter()
                    .enumerate()
                    .map(|(index, embedding)| OpenAiEmbedding {
                        object: "embedding",
                        embedding,
                        index,
                    })
                    .collect(),
                model: if model.is_empty() {
                    state.info.model_id.clone()
                } else {
                    model
                },
                usage: Usage {
                    prompt_tokens: tokens,
                    total_tokens: tokens,
                },
            })
            .into_response()),
            other => Err(ApiError::backend(format!("unexpected reply {other:?}"))),
        }
    }
    .await;
    state.finish("/v1/embeddings", &label, started, result)
}

async fn list_adapters(State(state): State<Shared>) -> Response {
    let started = Instant::now();
    let catalog = state.catalog.read().unwrap_or_else(|e| e.into_inner());
    let body = serde_json::json!({
        "adapters": catalog.adapters.values().collect::<Vec<_>>(),
        "fusions": catalog.fusions.values().collect::<Vec<_>>(),
    });
    drop(catalog);
    state.finish("/adapters", "-", started, Ok(Json(body).into_response()))
}

/// Whether `name` can be served and written in a setup expression.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `path` resolved under `root` (both canonical), or why not.
fn inside(root: &Path, path: &str) -> Result<PathBuf, ApiError> {
    let joined = root.join(path);
    let canonical = joined
        .canonicalize()
        .map_err(|e| ApiError::validation(format!("path: `{path}`: {e}")))?;
    if !canonical.starts_with(root) {
        return Err(ApiError::forbidden(format!(
            "path: `{path}` is outside --adapters-dir"
        )));
    }
    if !canonical.is_dir() {
        return Err(ApiError::validation(format!(
            "path: `{path}` is not a folder"
        )));
    }
    Ok(canonical)
}

async fn load_adapter(
    State(state): State<Shared>,
    body: Result<JsonBody<LoadRequest>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let JsonBody(req) = body?;
        let Some(root) = &state.adapters_dir else {
            return Err(ApiError::forbidden(
                "loading adapters at run time needs `sinew serve --adapters-dir DIR`",
            ));
        };
        if let Some(name) = req.name.as_deref().filter(|n| !valid_name(n)) {
            return Err(ApiError::validation(format!(
                "name: `{name}`: use letters, digits, `_`, `-` and `.`"
            )));
        }
        let path = inside(root, &req.path)?;
        let (respond, reply) = oneshot::channel();
        state
            .commands
            .send(Command::Load {
                path,
                name: req.name,
                respond,
            })
            .map_err(|_| ApiError::unavailable("the model thread has stopped"))?;
        let info = reply
            .await
            .map_err(|_| ApiError::unavailable("the model thread has stopped"))??;
        Ok((StatusCode::CREATED, Json(info)).into_response())
    }
    .await;
    state.finish("/adapters", "-", started, result)
}

async fn unload_adapter(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let started = Instant::now();
    let result = async {
        let (respond, reply) = oneshot::channel();
        state
            .commands
            .send(Command::Unload {
                name: name.clone(),
                respond,
            })
            .map_err(|_| ApiError::unavailable("the model thread has stopped"))?;
        reply
            .await
            .map_err(|_| ApiError::unavailable("the model thread has stopped"))??;
        Ok(Json(serde_json::json!({ "deleted": name })).into_response())
    }
    .await;
    state.finish("/adapters", "-", started, result)
}

async fn health(State(state): State<Shared>) -> Response {
    if state.alive.load(Ordering::SeqCst) {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        ApiError::unavailable("the model thread has stopped").into_response()
    }
}

async fn info(State(state): State<Shared>) -> Response {
    Json(&state.info).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_a_setup_can_hold() {
        assert!(valid_name("sst2_v1.2-b"));
        for bad in ["", "a,b", "Fuse(a)", "a b", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn paths_cannot_escape_the_root() {
        let root = tempfile::tempdir().unwrap();
        let root_path = root.path().canonicalize().unwrap();
        std::fs::create_dir(root_path.join("a")).unwrap();
        assert_eq!(inside(&root_path, "a").unwrap(), root_path.join("a"));
        let outside = inside(&root_path, "..").unwrap_err();
        assert_eq!(outside.status, StatusCode::FORBIDDEN);
        let absolute = inside(&root_path, "/").unwrap_err();
        assert_eq!(absolute.status, StatusCode::FORBIDDEN);
        let missing = inside(&root_path, "b").unwrap_err();
        assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
