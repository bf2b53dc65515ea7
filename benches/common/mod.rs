//! Setup shared by the adapter benches: the standard works of `sinew bench` (the real model with
//! seq_bn adapters, batches of prose, one training step), on the default model.

#![allow(dead_code)]

use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::MethodConfig;
use sinew::backbone::{FusedOps, TextTokenizer};
use sinew::data::assets;
use sinew::fusion::AdapterModel;

pub use sinew::works::{inputs as texts_input, step, task};

/// The backbone with `adapters` seq_bn adapters named `a0`, `a1`, … (heads included), truncating
/// at `tokens`.
pub fn model<B: FusedOps>(adapters: usize, tokens: usize) -> (AdapterModel<B>, TextTokenizer) {
    model_of(adapters, tokens, BnConfig::seq_bn())
}

/// A seq_bn adapter in layers 3–5 only (layers 0–2 left out, as AdapterDrop does).
pub fn upper_half() -> BnConfig {
    BnConfig {
        leave_out: vec![0, 1, 2],
        ..BnConfig::seq_bn()
    }
}

/// [`model`] with adapters of `config`.
pub fn model_of<B: FusedOps>(
    adapters: usize,
    tokens: usize,
    method: BnConfig,
) -> (AdapterModel<B>, TextTokenizer) {
    let dir = assets::ensure_default_model().expect("fetch the model: cargo run -- fetch");
    sinew::works::model(&dir, &MethodConfig::Bottleneck(method), adapters, tokens).unwrap()
}
