//! What only the `sinew` binary runs: the commands' jobs and their pictures.
//! - [`run`]: `sinew train`, `fuse`, `eval` and `predict` (run specs, run folders);
//! - [`demo`]: `sinew demo`, the main job;
//! - [`encode`]: the `sinew encode` job;
//! - [`bench`]: `sinew bench`, the standard works timed;
//! - [`merge`]: the `sinew merge` job;
//! - [`inspect`]: `sinew inspect`, a summary of an adapter folder;
//! - [`serve`]: `sinew serve`, the HTTP server with dynamic batching across adapters;
//! - [`plot`]: pictures (the fusion-attention heatmap, training curves, accuracy bars).

pub mod bench;
pub mod demo;
pub mod encode;
pub mod inspect;
pub mod merge;
pub mod plot;
pub mod run;
pub mod serve;
