//! sinew-fusion: AdapterFusion, composition blocks and the assembled adapter model.
//!
//! - [`setup`]: `Stack`, `Fuse`, `Parallel`, `BatchSplit`, `Split`, `Average` with AdapterHub's
//!   nesting rules, and the parser of expressions such as `Fuse(a, b, Stack(c, d))`;
//! - [`fusion`]: the AdapterFusion layer (AdapterHub's `BertFusion`) and its presets;
//! - [`compose`]: the hooks that walk a setup at every sub-layer end;
//! - [`delta`]: fusion of LoRA/IA3 adapters over the sub-layer deltas they cause (beyond
//!   AdapterHub, which fuses bottleneck adapters only);
//! - [`merge`]: weight-space LoRA merges (linear, cat, SVD, TIES, DARE);
//! - [`model`]: [`AdapterModel`], backbone + named adapters, fusions and heads — its registry,
//!   AdapterHub's files, what trains (freezing for `train_adapter` and `train_fusion`, merges) and
//!   the forward passes, one file each.
//!
//! # Where sinew departs from AdapterHub
//! [`Semantics::Sinew`] (the default) corrects these; [`Semantics::AdapterHub`]
//! (`AdapterModel::set_semantics`, `sinew encode --adapterhub-semantics`) reproduces the library
//! where a loaded model's outputs must match it:
//! - **Average** — AdapterHub takes `mean(stack(hᵢ)·wᵢ)`, an extra `1/N` on the weighted average
//!   (which includes the residual stream). sinew: `Σ wᵢ·hᵢ`.
//! - **residual_before** — AdapterHub adds the residual in place to the tensor it passes as both
//!   keys and values, so the keys see it too. sinew: values only, as the paper — except for a
//!   fusion read from a folder AdapterHub saved, which keeps AdapterHub's behaviour so that its
//!   outputs match (also after sinew saves it again: its config then says so explicitly).
//! - **Temperature** — AdapterHub anneals `T` on every forward call, in eval too, and does not
//!   save it. sinew anneals once per optimizer step
//!   ([`AdapterModel::anneal_fusion_temperatures`]); a loaded model starts at `T = 50` as
//!   AdapterHub's does, so their first calls agree.
//! - **Value regularisation** — AdapterHub's trainer adds `0.01·Σ‖I − W_v‖²` after the optimizer
//!   step (so it acts one step late) and never reads the config's `regularization` flag. sinew:
//!   [`AdapterModel::fusion_regularization_loss`] is added to the loss of the same step, only for
//!   fusions whose config asks for it.
//! - **Unused fusion layers** — AdapterHub builds fusion layers also in layers where its adapters
//!   are left out (they never act). sinew reads such folders but builds and saves only the layers
//!   that act.

pub mod compose;
pub mod delta;
pub mod error;
pub mod fusion;
pub mod merge;
pub mod model;
pub mod routed;
pub mod setup;

pub use error::FusionError;
pub use fusion::{AdapterFusion, FusionConfig, FusionLayer, Semantics};
pub use merge::{MergeError, MergeMethod, MergeOptions};
pub use model::{AdapterModel, AdapterOutput, HeadOutput, TrainedParts, TrainedPartsRecord};
pub use setup::{FusionId, ParseError, Setup};
