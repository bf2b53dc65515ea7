//! What can go wrong assembling, composing, training or running an adapter model; each variant
//! carries the names and numbers it is about, and prints as one line.

use sinew_adapter::AdapterError;

use crate::setup::{FusionId, ParseError};

/// An [`AdapterModel`](crate::AdapterModel) refused a request.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    /// No adapter has this name.
    #[error("unknown adapter `{name}` (loaded: {})", loaded.join(", "))]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The adapters the model holds.
        loaded: Vec<String>,
    },
    /// No head has this name.
    #[error("no head `{name}` is loaded")]
    UnknownHead {
        /// The name asked for.
        name: String,
    },
    /// No fusion of these adapters is loaded.
    #[error("no fusion `{fusion}` is loaded (add_fusion or load_fusion)")]
    UnknownFusion {
        /// The fusion asked for.
        fusion: FusionId,
    },
    /// The name is taken.
    #[error("{what} `{name}` already exists")]
    Exists {
        /// `an adapter`, `a head` or `a fusion`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// An adapter still used by the active setup, a fusion or a merge.
    #[error("adapter `{name}` is in use by {by}")]
    InUse {
        /// The adapter.
        name: String,
        /// What uses it.
        by: String,
    },
    /// A setup expression that does not parse.
    #[error(transparent)]
    Setup(#[from] ParseError),
    /// An adapter that acts outside sub-layer ends, inside a composition block.
    #[error("`{name}` is a {method} adapter: it can stand alone or in a top-level Stack, not inside a composition block")]
    NotComposable {
        /// The adapter.
        name: String,
        /// Its method (AdapterHub's `architecture`).
        method: &'static str,
    },
    /// An adapter that cannot share a routed pass with others.
    #[error("`{name}` is a {method} adapter: it changes what the other examples of a batch see, so it runs alone, not routed with other adapters in one batch")]
    NotRoutable {
        /// The adapter.
        name: String,
        /// Its method (AdapterHub's `architecture`).
        method: &'static str,
    },
    /// A fusion over an adapter of a method that does not fuse.
    #[error("fusion over `{name}`, a {method} adapter: sinew fuses bottleneck adapters, or LoRA/IA3 adapters (over their sub-layer deltas), not prefix or prompt tuning or other methods that act elsewhere")]
    NotFusable {
        /// The adapter.
        name: String,
        /// Its method.
        method: &'static str,
    },
    /// A fusion over bottleneck and LoRA/IA3 adapters together.
    #[error("fusion over {}: bottleneck and LoRA/IA3 adapters fuse separately", fusion.adapters().join(", "))]
    MixedFusion {
        /// The fusion.
        fusion: FusionId,
    },
    /// A fusion (or its file) needs an adapter that is not loaded.
    #[error("fusion `{fusion}` needs adapter `{name}`: load it first")]
    MissingAdapter {
        /// The fusion.
        fusion: FusionId,
        /// The adapter it needs.
        name: String,
    },
    /// An adapter of a method that cannot do what was asked (merge, weight-space merge, eject).
    #[error("`{name}` is not {needed}")]
    WrongMethod {
        /// The adapter.
        name: String,
        /// What it would have to be.
        needed: &'static str,
    },
    /// A second adapter merged into the backbone.
    #[error("adapter `{merged}` is already merged")]
    AlreadyMerged {
        /// The one merged.
        merged: String,
    },
    /// A setup run on a backbone another adapter is merged into.
    #[error("adapter `{merged}` is merged into the backbone's weights: unmerge it before running {setup}")]
    Merged {
        /// The merged adapter.
        merged: String,
        /// What was to run.
        setup: String,
    },
    /// Weight-space merge settings or inputs that do not combine.
    #[error(transparent)]
    Merge(#[from] crate::merge::MergeError),
    /// A pass asked to start above the layers the setup leaves as pretrained.
    #[error("cannot start at layer {layer}: the active setup leaves only the {frozen} layers below as pretrained")]
    StartLayer {
        /// The layer asked for.
        layer: usize,
        /// The layers below which nothing changes.
        frozen: usize,
    },
    /// Routing with a task name per example, but not as many as examples.
    #[error("{tasks} task names for a batch of {batch} examples")]
    TaskCount {
        /// Task names given.
        tasks: usize,
        /// Examples in the batch.
        batch: usize,
    },
    /// `BatchSplit` sizes or `Split` splits that do not add up to the batch or sequence.
    #[error("setup `{setup}`: {what} sum to {sum}, the {of} has {size}")]
    Sizes {
        /// The setup.
        setup: String,
        /// `batch_sizes` or `splits`.
        what: &'static str,
        /// Their sum.
        sum: usize,
        /// `batch` or `sequence`.
        of: &'static str,
        /// Rows or positions it has (with the unit).
        size: String,
    },
    /// A setup with heads for some of its rows but not these.
    #[error("setup `{setup}` has heads, but none named `{missing}` for its rows")]
    MissingHead {
        /// The setup.
        setup: String,
        /// The head its rows need.
        missing: String,
    },
    /// A task's setup has no head that predicts one label per text.
    #[error("{setup} has no text head")]
    NoTextHead {
        /// The setup, or `task X`.
        setup: String,
    },
    /// Saved trained parts that do not fit the model.
    #[error("{what} {problem}")]
    Parts {
        /// The part (`adapters[0]`, `backbone`, …).
        what: String,
        /// How it does not fit.
        problem: String,
    },
    /// A saved tensor whose shape is not the model's.
    #[error("{what}.{key} has shape {found:?}, the model expects {expected:?}")]
    Shape {
        /// The part.
        what: String,
        /// The tensor's path in it.
        key: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The saved shape.
        found: Vec<usize>,
    },
    /// An adapter, head or file failed.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

/// Result with [`FusionError`].
pub type Result<T, E = FusionError> = std::result::Result<T, E>;
