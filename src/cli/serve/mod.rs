//! `sinew serve`: many adapters on one backbone behind one HTTP server, with dynamic batching
//! across clients and adapters. TEI's shape, in three rooms with narrow seams between them:
//! - [`http`]: axum routes, validation, the key, limits and metrics of every answer;
//! - [`queue`]: requests waiting, packed into batches by a token budget and a request cap;
//! - [`worker`]: the model on its own thread, running batches (single adapters routed together
//!   in one pass) and loading adapters, least recently used out first;
//!
//! and [`api`] (the wire format) and [`metrics`] (Prometheus).

pub mod api;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use sinew::backbone::{FusedOps, Pretrained};
use sinew::backend::{BackendJob, BackendKind};
use sinew::fusion::AdapterModel;

use http::{AppState, Info};
use metrics::Metrics;
use queue::Limits;
use worker::{Catalog, Worker};

/// `sinew serve`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// HF model folder (default: all-MiniLM-L6-v2, fetched if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Adapter folder to serve, with its head (repeatable).
    #[arg(long = "adapter")]
    adapters: Vec<PathBuf>,
    /// Fusion folder to serve (repeatable; its adapters must be given with --adapter).
    #[arg(long = "fusion")]
    fusions: Vec<PathBuf>,
    /// Folder under which `POST /adapters` may load adapters at run time (none: refused).
    #[arg(long)]
    adapters_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: a free one; the line `listening on http://HOST:PORT` says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Burn backend to run on (default: the fastest CPU backend compiled in).
    #[arg(long, default_value_t)]
    backend: BackendKind,
    /// Most padded tokens (texts × longest text) in one forward pass.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Most texts in one forward pass (and in one request). 1 turns batching off.
    #[arg(long, default_value_t = 64)]
    max_batch_requests: usize,
    /// Longest a request waits for others to share its forward pass, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Requests queued or running at once; more are answered 429.
    #[arg(long, default_value_t = 512)]
    max_concurrent: usize,
    /// Adapters in memory at once; the least recently used are unloaded and reloaded on demand.
    #[arg(long)]
    max_adapters: Option<usize>,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 2_000_000)]
    payload_limit: usize,
    /// Longest input in tokens (default: the model's maximum positions).
    #[arg(long)]
    max_len: Option<usize>,
    /// Require `Authorization: Bearer KEY` on every route but `/` and `/health`.
    #[arg(long, env = "SINEW_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl ServeArgs {
    /// Loads the model and adapters, serves until SIGTERM or Ctrl-C, then finishes what is
    /// queued.
    pub fn run(self) -> anyhow::Result<()> {
        if self.max_batch_requests == 0 || self.max_batch_tokens == 0 || self.max_concurrent == 0 {
            anyhow::bail!(
                "--max-batch-requests, --max-batch-tokens and --max-concurrent must be at least 1"
            );
        }
        if self.max_adapters == Some(0) {
            anyhow::bail!("--max-adapters must be at least 1");
        }
        if self.api_key.as_deref() == Some("") {
            anyhow::bail!("--api-key (or SINEW_API_KEY) is empty");
        }
        let backend = self.backend;
        backend.run(ServeJob {
            args: self,
            backend,
        })
    }
}

struct ServeJob {
    args: ServeArgs,
    backend: BackendKind,
}

impl BackendJob for ServeJob {
    type Output = ();

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<()> {
        let args = self.args;
        let model_dir = match &args.model {
            Some(dir) => dir.clone(),
            None => {
                sinew::data::assets::ensure_default_model().context("fetching the default model")?
            }
        };
        let adapters_dir = args
            .adapters_dir
            .as_ref()
            .map(|d| {
                d.canonicalize()
                    .with_context(|| format!("--adapters-dir {}", d.display()))
            })
            .transpose()?;
        let pretrained = Pretrained::<B>::load(&model_dir, args.max_len, device)?;
        let tokenizer = pretrained.tokenizer.clone();
        let model = AdapterModel::new(pretrained.model, pretrained.config);
        let catalog = Arc::new(RwLock::new(Catalog::default()));
        let metrics = Arc::new(Metrics::new());
        let limits = Limits {
            max_batch_tokens: args.max_batch_tokens,
            max_batch_requests: args.max_batch_requests,
            max_wait: Duration::from_millis(args.max_wait_ms),
        };
        let mut worker = Worker::new(
            model,
            tokenizer.clone(),
            device.clone(),
            catalog.clone(),
            metrics.clone(),
            limits,
            args.max_adapters,
        );
        for dir in &args.adapters {
            let path = dir
                .canonicalize()
                .with_context(|| format!("--adapter {}", dir.display()))?;
            worker
                .load(&path, None)
                .map_err(|e| anyhow::anyhow!("--adapter {}: {e}", dir.display()))?;
        }
        for dir in &args.fusions {
            worker
                .load_fusion(dir)
                .map_err(|e| anyhow::anyhow!("--fusion {}: {e}", dir.display()))?;
        }
        let (commands, receiver) = std::sync::mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let model_thread = {
            let alive = alive.clone();
            std::thread::Builder::new()
                .name("sinew-model".into())
                .spawn(move || {
                    worker.run(receiver);
                    alive.store(false, Ordering::SeqCst);
                })?
        };
        let info = Info {
            model_id: model_dir.file_name().map_or_else(
                || model_dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            model_dir: model_dir.clone(),
            backend: self.backend.name().to_string(),
            version: env!("CARGO_PKG_VERSION"),
            max_input_length: tokenizer.max_len(),
            max_batch_requests: args.max_batch_requests,
            max_batch_tokens: args.max_batch_tokens,
            max_wait_ms: args.max_wait_ms,
            max_concurrent: args.max_concurrent,
            max_adapters: args.max_adapters,
            payload_limit: args.payload_limit,
            auth: args.api_key.is_some(),
        };
        let state = Arc::new(AppState {
            commands,
            alive,
            catalog,
            tokenizer,
            metrics,
            permits: Arc::new(tokio::sync::Semaphore::new(args.max_concurrent)),
            key_digest: args
                .api_key
                .as_ref()
                .map(|k| Sha256::digest(k.as_bytes()).into()),
            adapters_dir,
            limits,
            info,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
                .await
                .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
            let address = listener.local_addr()?;
            // The one line on stdout: scripts wait for it.
            println!("listening on http://{address}");
            std::io::stdout().flush()?;
            axum::serve(listener, http::router(state))
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("serving HTTP")
        })?;
        // Every handler is done: the last sender is gone and the model thread drains the queue.
        runtime.shutdown_timeout(Duration::from_secs(1));
        model_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: no new connections; finishing the requests in flight");
}
