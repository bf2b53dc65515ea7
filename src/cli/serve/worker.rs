//! The model thread: it owns the [`AdapterModel`], packs queued requests into batches and runs
//! them, and loads and unloads adapters (least recently used first under `--max-adapters`).
//! Handlers reach it only through [`Command`]s and read what it serves from the [`Catalog`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;
use sinew::adapter::HeadLogits;
use sinew::backbone::{FusedOps, SubLayer, TextTokenizer};
use sinew::fusion::routed::routable;
use sinew::fusion::{AdapterModel, FusionError, FusionId, Setup};
use tokio::sync::oneshot;

use super::api::{ApiError, AttentionMap, LabelScore};
use super::metrics::Metrics;
use super::queue::{Limits, Queue, Reply, Request, Task};

/// A head's kind and labels.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeadInfo {
    /// `classification`, `multilabel_classification` or `tagging`.
    pub kind: String,
    /// Its labels, by class index.
    pub labels: Vec<String>,
}

/// An adapter the server knows (in memory or not).
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    /// Its name.
    pub name: String,
    /// Its method (`bottleneck`, `lora`, …).
    pub method: String,
    /// Its trainable parameters (the head's not counted).
    pub parameters: usize,
    /// In memory now (else reloaded on demand).
    pub loaded: bool,
    /// Its head, if it has one.
    pub head: Option<HeadInfo>,
    /// Where it is loaded from.
    #[serde(skip)]
    pub path: PathBuf,
    /// Whether it shares a routed pass with other adapters (bottlenecks, LoRA and IA3 do).
    #[serde(skip)]
    pub routable: bool,
    /// Whether its answers depend on the batch's padding (a gate averages over padded
    /// positions too, as AdapterHub's): its requests run in passes of their own.
    #[serde(skip)]
    pub alone: bool,
}

/// A fusion the server holds.
#[derive(Debug, Clone, Serialize)]
pub struct FusionInfo {
    /// Its setup expression, `Fuse(a, b, c)`.
    pub setup: String,
    /// The fused adapters.
    pub adapters: Vec<String>,
    /// Its head, if it has one.
    pub head: Option<HeadInfo>,
}

/// What the server serves: kept by the model thread, read by the handlers.
#[derive(Debug, Default, Serialize)]
pub struct Catalog {
    /// By name.
    pub adapters: BTreeMap<String, AdapterInfo>,
    /// By AdapterHub's name `a,b,c`.
    pub fusions: BTreeMap<String, FusionInfo>,
}

impl Catalog {
    /// The head that predicts for `setup` (one head; the adapter's or the fusion's).
    pub fn head(&self, setup: &Setup) -> Result<&HeadInfo, ApiError> {
        let heads = setup.heads();
        let [name] = heads.as_slice() else {
            return Err(ApiError::validation(format!(
                "setup: `{setup}` has {} heads; /predict answers for setups with one",
                heads.len()
            )));
        };
        let head = self
            .adapters
            .get(name)
            .and_then(|a| a.head.as_ref())
            .or_else(|| self.fusions.get(name).and_then(|f| f.head.as_ref()));
        match head {
            Some(h) if h.kind == "tagging" => Err(ApiError::validation(format!(
                "setup: `{name}` has a tagging head; /predict answers with text-level heads"
            ))),
            Some(h) => Ok(h),
            None => Err(ApiError::validation(format!(
                "setup: `{name}` has no head to predict with"
            ))),
        }
    }

    /// Every adapter of `setup` is known and every fusion in it is loaded (404 otherwise).
    pub fn check(&self, setup: &Setup) -> Result<(), ApiError> {
        for name in setup.flatten() {
            if !self.adapters.contains_key(name) {
                let known: Vec<&str> = self.adapters.keys().map(String::as_str).collect();
                return Err(ApiError::not_found(format!(
                    "unknown adapter `{name}` (serving: {})",
                    known.join(", ")
                )));
            }
        }
        fn fusions(s: &Setup, out: &mut Vec<FusionId>) {
            if let Setup::Fuse(children) = s {
                out.push(FusionId::of(children));
            }
            s.children().iter().for_each(|c| fusions(c, out));
        }
        let mut ids = Vec::new();
        fusions(setup, &mut ids);
        for id in ids {
            if !self.fusions.contains_key(&id.to_string()) {
                return Err(ApiError::not_found(format!("no fusion `{id}` is loaded")));
            }
        }
        Ok(())
    }
}

/// What the handlers ask of the model thread.
pub enum Command {
    /// Queue a request for the next batches.
    Run(Request),
    /// Load an adapter folder (under `name`, else its saved name).
    Load {
        /// The folder (already checked to lie under `--adapters-dir`).
        path: PathBuf,
        /// The name to serve it under.
        name: Option<String>,
        /// Its description, or why not.
        respond: oneshot::Sender<Result<AdapterInfo, ApiError>>,
    },
    /// Unload and forget an adapter.
    Unload {
        /// Its name.
        name: String,
        /// Done, or why not.
        respond: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// The model, its tokenizer and the bookkeeping of what is loaded.
pub struct Worker<B: FusedOps> {
    model: AdapterModel<B>,
    tokenizer: TextTokenizer,
    device: B::Device,
    catalog: Arc<RwLock<Catalog>>,
    metrics: Arc<Metrics>,
    limits: Limits,
    max_adapters: Option<usize>,
    /// A logical clock of uses, for least-recently-used unloading.
    clock: u64,
    last_used: HashMap<String, u64>,
    queue: Queue,
}

/// A failure of the model on a request, as the client sees it.
fn model_error(e: FusionError) -> ApiError {
    match e {
        FusionError::UnknownAdapter { .. } | FusionError::UnknownFusion { .. } => {
            ApiError::not_found(e.to_string())
        }
        e => ApiError::validation(format!("setup: {e}")),
    }
}

fn backend_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::backend(e.to_string())
}

impl<B: FusedOps> Worker<B> {
    /// A worker for `model`; load adapters and fusions with [`load`](Self::load) and
    /// [`load_fusion`](Self::load_fusion), then [`run`](Self::run) it on its own thread.
    pub fn new(
        model: AdapterModel<B>,
        tokenizer: TextTokenizer,
        device: B::Device,
        catalog: Arc<RwLock<Catalog>>,
        metrics: Arc<Metrics>,
        limits: Limits,
        max_adapters: Option<usize>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            device,
            catalog,
            metrics,
            limits,
            max_adapters,
            clock: 0,
            last_used: HashMap::new(),
            queue: Queue::default(),
        }
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|e| e.into_inner())
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    fn head_info(&self, name: &str) -> Option<HeadInfo> {
        self.model.head_config(name).map(|c| HeadInfo {
            kind: c.head_type.clone(),
            labels: c.labels(),
        })
    }

    /// Loads adapter folder `path` (under `name`, else its saved name), making room first.
    pub fn load(&mut self, path: &Path, name: Option<&str>) -> Result<AdapterInfo, ApiError> {
        if let Some(name) = name {
            if self.catalog().adapters.contains_key(name) {
                return Err(ApiError::conflict(format!(
                    "an adapter named `{name}` is already served"
                )));
            }
        }
        let name = self
            .model
            .load_adapter_as(path, name, &self.device)
            .map_err(|e| match e {
                FusionError::Exists { .. } => ApiError::conflict(e.to_string()),
                e => ApiError::validation(format!("path: {e}")),
            })?;
        if self.catalog().adapters.contains_key(&name) {
            // Known under this name but unloaded (least recently used): not a second copy.
            self.drop_from_model(&name);
            return Err(ApiError::conflict(format!(
                "an adapter named `{name}` is already served"
            )));
        }
        self.make_room(&[&name]);
        let adapter = self.model.adapter(&name);
        let info = AdapterInfo {
            method: self
                .model
                .adapter_config(&name)
                .map_or("?", |c| c.architecture())
                .to_string(),
            parameters: self.model.adapter_params(&name).map_err(backend_error)?,
            loaded: true,
            head: self.head_info(&name),
            path: path.to_path_buf(),
            routable: adapter.is_some_and(|a| routable(a.composes()) && !a.mixes_positions()),
            alone: adapter.is_some_and(|a| a.mixes_positions()),
            name: name.clone(),
        };
        self.touch(&[&name]);
        self.catalog_mut().adapters.insert(name, info.clone());
        self.count_loaded();
        Ok(info)
    }

    /// Loads a fusion folder (its adapters must be served; they stay loaded from now on).
    pub fn load_fusion(&mut self, path: &Path) -> Result<FusionInfo, ApiError> {
        let id = self
            .model
            .load_fusion(path, &self.device)
            .map_err(|e| ApiError::validation(format!("{}: {e}", path.display())))?;
        let info = FusionInfo {
            setup: id.setup().to_string(),
            adapters: id.adapters().to_vec(),
            head: self.head_info(&id.to_string()),
        };
        self.catalog_mut()
            .fusions
            .insert(id.to_string(), info.clone());
        Ok(info)
    }

    /// Unloads adapter `name` and forgets it.
    fn unload(&mut self, name: &str) -> Result<(), ApiError> {
        if !self.catalog().adapters.contains_key(name) {
            return Err(ApiError::not_found(format!("unknown adapter `{name}`")));
        }
        if let Some(id) = self.pinned_by(name) {
            return Err(ApiError::conflict(format!(
                "adapter `{name}` is in use by fusion `{id}`"
            )));
        }
        self.drop_from_model(name);
        self.catalog_mut().adapters.remove(name);
        self.last_used.remove(name);
        self.count_loaded();
        Ok(())
    }

    /// The fusion that keeps adapter `name` loaded, if any.
    fn pinned_by(&self, name: &str) -> Option<FusionId> {
        self.model
            .fusion_ids()
            .find(|id| id.adapters().iter().any(|a| a == name))
            .cloned()
    }

    fn drop_from_model(&mut self, name: &str) {
        if self.model.adapter(name).is_some() {
            // Nothing is active between batches: a loaded adapter outside fusions can go.
            let _ = self.model.activate(None);
            if let Err(e) = self.model.delete_adapter(name) {
                tracing::warn!("unloading adapter `{name}`: {e}");
            }
            let _ = self.model.delete_head(name);
        }
    }

    fn count_loaded(&self) {
        self.metrics
            .adapters_loaded
            .set(self.model.adapter_names().len() as i64);
    }

    fn touch(&mut self, names: &[&str]) {
        self.clock += 1;
        for name in names {
            self.last_used.insert(name.to_string(), self.clock);
        }
    }

    /// Under `--max-adapters`, unloads the least recently used adapters (not `keep`, not a
    /// fusion's) until the adapters not yet loaded among `keep` fit.
    fn make_room(&mut self, keep: &[&str]) {
        let Some(max) = self.max_adapters else {
            return;
        };
        let coming = keep
            .iter()
            .filter(|n| self.model.adapter(n).is_none())
            .count();
        while self.model.adapter_names().len() + coming > max {
            let victim = self
                .model
                .adapter_names()
                .into_iter()
                .filter(|n| !keep.contains(n) && self.pinned_by(n).is_none())
                .min_by_key(|n| self.last_used.get(*n).copied().unwrap_or(0))
                .map(str::to_string);
            let Some(victim) = victim else {
                tracing::warn!(
                    "--max-adapters {max}: every loaded adapter is in use; loading one more"
                );
                return;
            };
            tracing::info!("unloading adapter `{victim}` (least recently used)");
            self.drop_from_model(&victim);
            if let Some(info) = self.catalog_mut().adapters.get_mut(&victim) {
                info.loaded = false;
            }
        }
        self.count_loaded();
    }

    /// Reloads the adapters of `names` that were unloaded.
    fn ensure_loaded(&mut self, names: &[&str]) -> Result<(), ApiError> {
        self.touch(names);
        for &name in names {
            let path = {
                let catalog = self.catalog();
                match catalog.adapters.get(name) {
                    Some(info) if !info.loaded => info.path.clone(),
                    Some(_) => continue,
                    None => return Err(ApiError::not_found(format!("unknown adapter `{name}`"))),
                }
            };
            self.make_room(names);
            tracing::info!("reloading adapter `{name}` from {}", path.display());
            self.model
                .load_adapter_as(&path, Some(name), &self.device)
                .map_err(|e| ApiError::backend(format!("reloading adapter `{name}`: {e}")))?;
            if let Some(info) = self.catalog_mut().adapters.get_mut(name) {
                info.loaded = true;
            }
        }
        self.count_loaded();
        Ok(())
    }

    /// Serves commands until every sender is gone, then finishes what is queued.
    pub fn run(mut self, commands: Receiver<Command>) {
        let mut open = true;
        while open || !self.queue.is_empty() {
            // Wait for work, then for company until the oldest request's deadline or a full batch.
            if self.queue.is_empty() {
                match commands.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => open = false,
                }
            }
            // Everything sent while the model was busy joins first: those requests are past
            // their deadline already, and leaving them in the channel would run them one pass
            // each (a load that outpaces one pass would never batch again).
            loop {
                match commands.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            while open && !self.queue.is_empty() && !self.queue.full(&self.limits) {
                let deadline = self.queue.deadline(&self.limits).expect("not empty");
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match commands.recv_timeout(deadline - now) {
                    Ok(c) => self.handle(c),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            let (batch, dropped) = self.queue.next_batch(&self.limits);
            self.metrics.dropped.inc_by(dropped as u64);
            self.metrics.queue_size.set(self.queue.len() as i64);
            if !batch.is_empty() {
                self.run_batch(batch);
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Run(request) => {
                self.queue.push(request);
                self.metrics.queue_size.set(self.queue.len() as i64);
            }
            Command::Load {
                path,
                name,
                respond,
            } => {
                let _ = respond.send(self.load(&path, name.as_deref()));
            }
            Command::Unload { name, respond } => {
                let _ = respond.send(self.unload(&name));
            }
        }
    }

    /// Which pass a request joins, and whether that pass is routed: requests for single
    /// routable adapters share one routed pass per task (and per whether their adapters have
    /// heads), others one per task and setup; `None` for a pass of its own (an attention map,
    /// or a setup whose answers depend on the batch's padding).
    fn pass_of(&self, request: &Request) -> (Option<String>, bool) {
        let catalog = self.catalog();
        let known = |name: &str| catalog.adapters.get(name);
        let mut names = request.setup.iter().flat_map(Setup::flatten);
        if request.task == Task::Attention || names.any(|n| known(n).is_some_and(|a| a.alone)) {
            return (None, false);
        }
        let kind = request.task.kind();
        if let Some(Setup::Adapter(name)) = &request.setup {
            if let Some(adapter) = known(name).filter(|a| a.routable) {
                return (
                    Some(format!("{kind} routed {}", adapter.head.is_some())),
                    true,
                );
            }
        }
        let setup = request
            .setup
            .as_ref()
            .map_or("-".into(), ToString::to_string);
        (Some(format!("{kind} {setup}")), false)
    }

    /// Runs one batch, a forward pass per group of requests that can share one.
    fn run_batch(&mut self, batch: Vec<Request>) {
        let mut groups: Vec<(Option<String>, bool, Vec<Request>)> = Vec::new();
        for request in batch {
            let (key, routed) = self.pass_of(&request);
            match groups
                .iter_mut()
                .find(|(k, _, _)| key.is_some() && *k == key)
            {
                Some((_, _, members)) => members.push(request),
                None => groups.push((key, routed, vec![request])),
            }
        }
        for (_, routed, members) in groups {
            let result = self.run_group(&members, routed);
            match result {
                Ok(replies) => {
                    for (request, reply) in members.into_iter().zip(replies) {
                        let _ = request.respond.send(Ok(reply));
                    }
                }
                Err(e) => {
                    for request in members {
                        let _ = request.respond.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// One forward pass for `members` (same task kind; one setup, or routed single adapters).
    fn run_group(&mut self, members: &[Request], routed: bool) -> Result<Vec<Reply>, ApiError> {
        let count: usize = members.iter().map(|r| r.texts.len()).sum();
        let longest = members.iter().map(|r| r.longest).max().unwrap_or(0);
        self.metrics.batch_texts.observe(count as f64);
        self.metrics.batch_tokens.observe((count * longest) as f64);
        let names: Vec<String> = members
            .iter()
            .flat_map(|r| r.setup.iter().flat_map(|s| s.flatten()))
            .map(str::to_string)
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.ensure_loaded(&names)?;
        let texts: Vec<&str> = members
            .iter()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        let tokens = self.tokenizer.encode(&texts).map_err(backend_error)?;
        let input = tokens.to_input::<B>(&self.device);
        let task = members[0].task;
        let routes: Vec<&str> = members
            .iter()
            .flat_map(|r| {
                let name = r.setup.as_ref().map_or("", |s| s.first());
                std::iter::repeat_n(name, r.texts.len())
            })
            .collect();
        if !routed {
            self.model
                .activate(members[0].setup.clone())
                .map_err(model_error)?;
        }
        let replies = match task {
            Task::Embed { .. } => {
                let output = if routed {
                    self.model.forward_routed(&input, &routes)
                } else {
                    self.model.forward(&input)
                }
                .map_err(model_error)?;
                let pooled = output.encoded.mean_pooled();
                let [_, hidden] = pooled.dims();
                let values = pooled.into_data().to_vec::<f32>().map_err(backend_error)?;
                let mut rows = values.chunks(hidden);
                members
                    .iter()
                    .map(|r| {
                        let Task::Embed { normalize } = r.task else {
                            unreachable!("one task kind per group")
                        };
                        let vectors = rows
                            .by_ref()
                            .take(r.texts.len())
                            .map(|v| if normalize { unit(v) } else { v.to_vec() })
                            .collect();
                        Reply::Embeddings(vectors)
                    })
                    .collect()
            }
            Task::Predict { .. } => {
                let output = if routed {
                    self.model.logits_routed(&input, &routes)
                } else {
                    self.model.logits(&input)
                }
                .map_err(model_error)?;
                let mut per_row: Vec<Option<(String, Vec<f32>)>> = vec![None; texts.len()];
                for head in output.heads {
                    let HeadLogits::Text(logits) = head.logits else {
                        return Err(ApiError::validation(format!(
                            "setup: `{}` has a tagging head; /predict answers with text-level heads",
                            head.name
                        )));
                    };
                    let [_, labels] = logits.dims();
                    let values = logits.into_data().to_vec::<f32>().map_err(backend_error)?;
                    for (k, &row) in head.examples.iter().enumerate() {
                        if let Some(slot) = per_row.get_mut(row) {
                            *slot = Some((
                                head.name.clone(),
                                values[k * labels..(k + 1) * labels].to_vec(),
                            ));
                        }
                    }
                }
                let catalog = self.catalog();
                let mut rows = per_row.into_iter();
                let mut replies = Vec::with_capacity(members.len());
                for r in members {
                    let Task::Predict { raw_scores } = r.task else {
                        unreachable!("one task kind per group")
                    };
                    let setup = r.setup.as_ref().expect("predict has a setup");
                    let head = catalog.head(setup)?;
                    let mut scores = Vec::with_capacity(r.texts.len());
                    for row in rows.by_ref().take(r.texts.len()) {
                        let (_, logits) = row.ok_or_else(|| {
                            ApiError::backend(format!("setup `{setup}` gave no logits for a text"))
                        })?;
                        scores.push(label_scores(&logits, head, raw_scores));
                    }
                    replies.push(Reply::Predictions(scores));
                }
                replies
            }
            Task::Attention => {
                let setup = members[0].setup.as_ref().expect("attention has a setup");
                let output = self
                    .model
                    .forward_with_attentions(&input)
                    .map_err(model_error)?;
                let adapters = first_fuse(setup).ok_or_else(|| {
                    ApiError::validation(format!("setup: `{setup}` has no Fuse(…)"))
                })?;
                let mask = &tokens.attention_mask;
                let mut rows = Vec::new();
                for (layer, site, attention) in output.fusion_attentions.into_iter().flatten() {
                    let [_, seq, n] = attention.dims();
                    let values = attention
                        .into_data()
                        .to_vec::<f32>()
                        .map_err(backend_error)?;
                    let mut sum = vec![0f32; n];
                    let mut count = 0usize;
                    for (b, keep) in mask.iter().enumerate() {
                        for (t, &k) in keep.iter().enumerate().take(seq) {
                            if k == 1 {
                                let at = (b * seq + t) * n;
                                sum.iter_mut()
                                    .zip(&values[at..at + n])
                                    .for_each(|(s, v)| *s += v);
                                count += 1;
                            }
                        }
                    }
                    let ffn = site == SubLayer::FeedForward;
                    let label = format!("layer {layer} {}", if ffn { "FFN" } else { "attention" });
                    let mean = sum.iter().map(|s| s / count.max(1) as f32).collect();
                    rows.push(((layer, ffn), label, mean));
                }
                rows.sort_by_key(|(order, _, _)| *order);
                let (layers, values) = rows.into_iter().map(|(_, l, v)| (l, v)).unzip();
                vec![Reply::Attention(AttentionMap {
                    adapters,
                    layers,
                    values,
                })]
            }
        };
        if !routed {
            let _ = self.model.activate(None);
        }
        Ok(replies)
    }
}

/// The children of the first `Fuse` in `setup`, by name.
fn first_fuse(setup: &Setup) -> Option<Vec<String>> {
    match setup {
        Setup::Fuse(children) => Some(children.iter().map(ToString::to_string).collect()),
        s => s.children().iter().find_map(first_fuse),
    }
}

/// `v` scaled to unit length (a zero vector stays zero), as `torch.nn.functional.normalize`.
fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// A head's logits as label scores, highest first: probabilities (softmax, or a sigmoid per
/// label for a multi-label head) or, with `raw`, the logits.
fn label_scores(logits: &[f32], head: &HeadInfo, raw: bool) -> Vec<LabelScore> {
    let scores: Vec<f32> = if raw {
        logits.to_vec()
    } else if head.kind == "multilabel_classification" {
        logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect()
    } else {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.iter().map(|e| e / sum).collect()
    };
    let mut out: Vec<LabelScore> = scores
        .into_iter()
        .enumerate()
        .map(|(i, score)| LabelScore {
            label: head
                .labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            score,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(kind: &str) -> HeadInfo {
        HeadInfo {
            kind: kind.into(),
            labels: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    /// Softmax and sigmoid against their closed forms, sorted highest first.
    #[test]
    fn scores_are_softmax_or_sigmoid_highest_first() {
        let logits = [1.0f32, 3.0, 2.0];
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        let soft = label_scores(&logits, &head("classification"), false);
        let names: Vec<&str> = soft.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        for s in &soft {
            let i = ["a", "b", "c"].iter().position(|l| *l == s.label).unwrap();
            assert!((s.score - logits[i].exp() / z).abs() < 1e-6);
        }
        let multi = label_scores(&logits, &head("multilabel_classification"), false);
        assert!((multi[0].score - 1.0 / (1.0 + (-3f32).exp())).abs() < 1e-6);
        let raw = label_scores(&logits, &head("classification"), true);
        assert_eq!(raw[0].score, 3.0);
    }

    #[test]
    fn unit_vectors_have_length_one() {
        let v = unit(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        assert_eq!(unit(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
