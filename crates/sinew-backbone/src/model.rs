//! The BERT-family encoder (BERT, MiniLM, RoBERTa), one readable file.
//!
//! Module and field names mirror the HuggingFace checkpoint keys (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`, …) so that loading is a near-identity key map; the two
//! renames Rust forces (`self` → `self_attention`, `LayerNorm` → `layer_norm`) live in
//! [`crate::load`]. Every adapter hook site is marked `hooks.` below.

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use sinew_kernels::{self as kernels, FusedOps, LayerNorm, LayerNormConfig};

use crate::config::BertConfig;
use crate::hooks::{AttentionKv, Hooks, NoHooks, Projection, SubLayer};

/// A tokenized batch, every tensor `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct EncoderInput<B: Backend> {
    /// Token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// Segment ids (0 for single sentences).
    pub token_type_ids: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
}

/// What the encoder returns.
#[derive(Debug, Clone)]
pub struct EncoderOutput<B: Backend> {
    /// Hidden states of the last layer, `[batch, seq, hidden]`, padded positions included.
    pub last_hidden_state: Tensor<B, 3>,
    /// 1.0 for real tokens, 0.0 for padding, `[batch, seq]` (as extended by hooks, if any).
    pub keep: Tensor<B, 2>,
    /// `tanh(dense(h[CLS]))`, `[batch, hidden]`, when the checkpoint has a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
}

impl<B: Backend> EncoderOutput<B> {
    /// Mask-weighted mean of the last hidden states, `[batch, hidden]` (sentence-transformers pooling).
    pub fn mean_pooled(&self) -> Tensor<B, 2> {
        let [batch, seq, _] = self.last_hidden_state.dims();
        let keep = self.keep.clone().reshape([batch, seq, 1]);
        let summed = (self.last_hidden_state.clone() * keep.clone()).sum_dim(1);
        let count = keep.sum_dim(1).clamp_min(1e-9);
        (summed / count).squeeze_dim(1)
    }
}

/// Where a forward pass starts.
#[derive(Debug, Clone)]
pub enum Start<'a, B: Backend> {
    /// Token ids: the embeddings, then every layer.
    Tokens(&'a EncoderInput<B>),
    /// The hidden states entering layer `layer`, `[batch, seq, hidden]`, with their keep-mask
    /// `[batch, seq]` (from [`Bert::hidden_before`]): the embeddings and the layers below are
    /// skipped, and so are the hooks there.
    Hidden {
        /// The first layer to run.
        layer: usize,
        /// Its input.
        hidden: Tensor<B, 3>,
        /// 1.0 for real tokens.
        keep: Tensor<B, 2>,
    },
}

impl<B: Backend> Start<'_, B> {
    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Tokens(input) => input.input_ids.dims(),
            Self::Hidden { keep, .. } => keep.dims(),
        }
    }
}

/// Which positions of the last layer's output a caller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Positions {
    /// Every position (embeddings, token-level heads).
    #[default]
    All,
    /// The first only (`[CLS]`/`<s>`: all that text-level heads and the pooler read). The last
    /// layer then computes its queries, attention output and FFN for that position alone — its
    /// keys and values still see every token — and `last_hidden_state` is `[batch, 1, hidden]`.
    First,
}

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    /// `embeddings.word_embeddings`, `[vocab, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `embeddings.position_embeddings`, `[max_positions, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// `embeddings.token_type_embeddings`, `[type_vocab, hidden]`.
    pub token_type_embeddings: Embedding<B>,
    /// `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
    /// RoBERTa counts positions from `pad_token_id + 1`, skipping padding.
    #[module(skip)]
    roberta_pad: Option<usize>,
}

impl<B: FusedOps> Embeddings<B> {
    /// `[batch, seq]` ids → `[batch, seq, hidden]`.
    pub fn forward(&self, input: &EncoderInput<B>) -> Tensor<B, 3> {
        let positions = position_ids(&input.attention_mask, self.roberta_pad);
        let x = self.word_embeddings.forward(input.input_ids.clone())
            + self.position_embeddings.forward(positions)
            + self
                .token_type_embeddings
                .forward(input.token_type_ids.clone());
        kernels::dropout(self.layer_norm.forward(x), self.dropout.prob)
    }
}

/// Position ids `[batch, seq]`: `0..seq` for BERT; for RoBERTa, `pad + 1, pad + 2, …` over real
/// tokens and `pad` on padding (HF's `create_position_ids_from_input_ids`).
fn position_ids<B: Backend>(
    mask: &Tensor<B, 2, Int>,
    roberta_pad: Option<usize>,
) -> Tensor<B, 2, Int> {
    let [batch, seq] = mask.dims();
    match roberta_pad {
        None => Tensor::<B, 1, Int>::arange(0..seq as i64, &mask.device())
            .reshape([1, seq])
            .expand([batch, seq]),
        Some(pad) => mask.clone().cumsum(1) * mask.clone() + pad as i64,
    }
}

/// `attention.self`: the Q, K, V projections and scaled dot-product attention.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `query`, hidden → hidden.
    pub query: Linear<B>,
    /// `key`, hidden → hidden.
    pub key: Linear<B>,
    /// `value`, hidden → hidden.
    pub value: Linear<B>,
    dropout: Dropout,
    heads: usize,
}

impl<B: FusedOps> SelfAttention<B> {
    /// `[batch, seq, hidden]` with keep-mask `[batch, seq]` → context `[batch, seq, hidden]`.
    pub fn forward<H: Hooks<B>>(
        &self,
        layer: usize,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
        hooks: &mut H,
    ) -> Tensor<B, 3> {
        self.attend(layer, hidden.clone(), hidden, keep, hooks)
    }

    /// The context of `queries` `[batch, q, hidden]` (the first `q` positions of `hidden`)
    /// attending over all of `hidden` `[batch, seq, hidden]` → `[batch, q, hidden]`.
    pub fn attend<H: Hooks<B>>(
        &self,
        layer: usize,
        queries: Tensor<B, 3>,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
        hooks: &mut H,
    ) -> Tensor<B, 3> {
        let head_dim = hidden.dims()[2] / self.heads;
        let split = |x: Tensor<B, 3>| {
            let [b, s, _] = x.dims();
            x.reshape([b, s, self.heads, head_dim]).swap_dims(1, 2)
        };
        let query = split(hooks.project(layer, Projection::Query, &self.query, queries));
        let key = split(hooks.project(layer, Projection::Key, &self.key, hidden.clone()));
        let value = split(hooks.project(layer, Projection::Value, &self.value, hidden.clone()));
        let AttentionKv {
            key, value, keep, ..
        } = hooks.attention_kv(
            layer,
            AttentionKv {
                key,
                value,
                keep,
                input: hidden,
            },
        );
        // softmax(q·kᵀ/√d + mask)·v, dropout on the probabilities, heads merged back: one op.
        kernels::attention(query, key, value, keep, self.dropout.prob)
    }
}

/// `attention.output` (and, with a wider input, the FFN's `output`): dense, dropout, then the
/// sub-layer end — residual + LayerNorm unless a hook decides otherwise.
#[derive(Module, Debug)]
pub struct SubLayerOutput<B: Backend> {
    /// `dense`.
    pub dense: Linear<B>,
    /// `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: FusedOps> SubLayerOutput<B> {
    /// `x` `[batch, seq, in]`, `residual` `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward<H: Hooks<B>>(
        &self,
        layer: usize,
        site: SubLayer,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        hooks: &mut H,
    ) -> Tensor<B, 3> {
        let projection = match site {
            SubLayer::Attention => Projection::AttentionOutput,
            SubLayer::FeedForward => Projection::Output,
        };
        let out = kernels::dropout(
            hooks.project(layer, projection, &self.dense, x),
            self.dropout.prob,
        );
        hooks.sublayer_end(layer, site, out, residual, &self.layer_norm)
    }
}

/// `attention`: self-attention followed by its output sub-layer.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `attention.self` (renamed: `self` is a Rust keyword).
    pub self_attention: SelfAttention<B>,
    /// `attention.output`.
    pub output: SubLayerOutput<B>,
}

/// `intermediate`: the FFN's first projection and GELU.
#[derive(Module, Debug)]
pub struct Intermediate<B: Backend> {
    /// `intermediate.dense`, hidden → intermediate.
    pub dense: Linear<B>,
}

/// `encoder.layer.N`: one post-LayerNorm transformer layer.
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    /// `attention`.
    pub attention: Attention<B>,
    /// `intermediate`.
    pub intermediate: Intermediate<B>,
    /// `output` (FFN out).
    pub output: SubLayerOutput<B>,
}

impl<B: FusedOps> Layer<B> {
    /// `[batch, seq, hidden]` → `[batch', seq, hidden]` (`batch'` differs only if a hook replicates).
    pub fn forward<H: Hooks<B>>(
        &self,
        index: usize,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
        hooks: &mut H,
    ) -> Tensor<B, 3> {
        self.forward_for(index, hidden, keep, hooks, Positions::All)
    }

    /// [`forward`](Self::forward) computing only the output `positions` (`[batch', 1, hidden]`
    /// for [`Positions::First`]).
    pub(crate) fn forward_for<H: Hooks<B>>(
        &self,
        index: usize,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
        hooks: &mut H,
        positions: Positions,
    ) -> Tensor<B, 3> {
        let queries = match positions {
            Positions::All => hidden.clone(),
            Positions::First => hidden.clone().narrow(1, 0, 1),
        };
        let context =
            self.attention
                .self_attention
                .attend(index, queries.clone(), hidden, keep, hooks);
        let attended =
            self.attention
                .output
                .forward(index, SubLayer::Attention, context, queries, hooks);
        let inner = kernels::gelu(hooks.project(
            index,
            Projection::Intermediate,
            &self.intermediate.dense,
            attended.clone(),
        ));
        self.output
            .forward(index, SubLayer::FeedForward, inner, attended, hooks)
    }
}

/// `encoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// `encoder.layer`.
    pub layer: Vec<Layer<B>>,
}

/// `pooler`: dense + tanh on the first token.
#[derive(Module, Debug)]
pub struct Pooler<B: Backend> {
    /// `pooler.dense`.
    pub dense: Linear<B>,
}

/// A BERT-family encoder with optional pooler.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// `embeddings`.
    pub embeddings: Embeddings<B>,
    /// `encoder`.
    pub encoder: Encoder<B>,
    /// `pooler`, present when the checkpoint has one.
    pub pooler: Option<Pooler<B>>,
}

impl BertConfig {
    /// Builds a randomly initialised encoder (weights are then loaded by [`crate::load`]).
    pub fn init<B: Backend>(&self, with_pooler: bool, device: &B::Device) -> Bert<B> {
        let hidden = self.hidden_size;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || {
            LayerNormConfig::new(hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let embedding = |n| EmbeddingConfig::new(n, hidden).init(device);
        let layer = || Layer {
            attention: Attention {
                self_attention: SelfAttention {
                    query: linear(hidden, hidden),
                    key: linear(hidden, hidden),
                    value: linear(hidden, hidden),
                    dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                    heads: self.num_attention_heads,
                },
                output: SubLayerOutput {
                    dense: linear(hidden, hidden),
                    layer_norm: norm(),
                    dropout: dropout(),
                },
            },
            intermediate: Intermediate {
                dense: linear(hidden, self.intermediate_size),
            },
            output: SubLayerOutput {
                dense: linear(self.intermediate_size, hidden),
                layer_norm: norm(),
                dropout: dropout(),
            },
        };
        Bert {
            embeddings: Embeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: embedding(self.type_vocab_size),
                layer_norm: norm(),
                dropout: dropout(),
                roberta_pad: self.roberta_positions().then_some(self.pad_token_id),
            },
            encoder: Encoder {
                layer: (0..self.num_hidden_layers).map(|_| layer()).collect(),
            },
            pooler: with_pooler.then(|| Pooler {
                dense: linear(hidden, hidden),
            }),
        }
    }
}

impl<B: FusedOps> Bert<B> {
    /// The plain encoder, no adapters.
    pub fn forward(&self, input: &EncoderInput<B>) -> EncoderOutput<B> {
        self.forward_with(input, &mut NoHooks)
    }

    /// The encoder with adapters acting at the [`Hooks`] sites.
    pub fn forward_with<H: Hooks<B>>(
        &self,
        input: &EncoderInput<B>,
        hooks: &mut H,
    ) -> EncoderOutput<B> {
        self.run(Start::Tokens(input), hooks)
    }

    /// The plain hidden states entering layer `layer` (the embeddings for 0), `[batch, seq,
    /// hidden]`: what [`Start::Hidden`] resumes from when no adapter acts below `layer`.
    pub fn hidden_before(&self, input: &EncoderInput<B>, layer: usize) -> Tensor<B, 3> {
        let keep = input.attention_mask.clone().float();
        let mut hidden = self.embeddings.forward(input);
        for (index, l) in self.encoder.layer.iter().enumerate().take(layer) {
            hidden = l.forward(index, hidden, keep.clone(), &mut NoHooks);
        }
        hidden
    }

    /// The encoder from `start`, with adapters acting at the [`Hooks`] sites.
    pub fn run<H: Hooks<B>>(&self, start: Start<'_, B>, hooks: &mut H) -> EncoderOutput<B> {
        self.run_for(start, hooks, Positions::All)
    }

    /// [`run`](Self::run) for a caller that reads only `positions` of the output: with
    /// [`Positions::First`] the last layer runs for the first position alone and the output
    /// (`last_hidden_state`, `keep`) holds that position only; the pooler is unchanged.
    pub fn run_for<H: Hooks<B>>(
        &self,
        start: Start<'_, B>,
        hooks: &mut H,
        positions: Positions,
    ) -> EncoderOutput<B> {
        let (first, mut hidden, mut keep) = match start {
            Start::Tokens(input) => {
                let keep = input.attention_mask.clone().float();
                let (hidden, keep) = hooks.embedded(self.embeddings.forward(input), keep);
                (0, hidden, keep)
            }
            Start::Hidden {
                layer,
                hidden,
                keep,
            } => (layer, hidden, keep),
        };
        let last = self.encoder.layer.len().saturating_sub(1);
        for (index, layer) in self.encoder.layer.iter().enumerate().skip(first) {
            let wanted = if index == last {
                positions
            } else {
                Positions::All
            };
            hidden = layer.forward_for(index, hidden, keep.clone(), hooks, wanted);
            keep = repeat_to_batch(keep, hidden.dims()[0]);
            hidden = hooks.layer_end(index, hidden, &keep);
        }
        if positions == Positions::First && first < self.encoder.layer.len() {
            keep = keep.narrow(1, 0, 1);
        }
        let pooler_output = self.pooler.as_ref().map(|pooler| {
            let [batch, _, width] = hidden.dims();
            let first = hidden
                .clone()
                .slice([0..batch, 0..1])
                .reshape([batch, width]);
            kernels::linear(&pooler.dense, first).tanh()
        });
        EncoderOutput {
            last_hidden_state: hidden,
            keep,
            pooler_output,
        }
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }
}

/// A hook that replicated the batch (AdapterHub's `Parallel`) makes the mask follow.
fn repeat_to_batch<B: Backend>(keep: Tensor<B, 2>, batch: usize) -> Tensor<B, 2> {
    let current = keep.dims()[0];
    if current == batch || current == 0 || !batch.is_multiple_of(current) {
        keep
    } else {
        keep.repeat_dim(0, batch / current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray<f32>;

    fn tiny() -> BertConfig {
        BertConfig::from_json(
            r#"{"vocab_size":50,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,
            "intermediate_size":16,"max_position_embeddings":20,"hidden_dropout_prob":0.0,
            "attention_probs_dropout_prob":0.0}"#,
        )
        .unwrap()
    }

    fn input(ids: [[i64; 4]; 2], mask: [[i64; 4]; 2]) -> EncoderInput<B> {
        let device = Default::default();
        EncoderInput {
            input_ids: Tensor::from_data(ids, &device),
            token_type_ids: Tensor::zeros([2, 4], &device),
            attention_mask: Tensor::from_data(mask, &device),
        }
    }

    /// Position ids against the closed forms of HF's BERT (arange) and RoBERTa (padding_idx = 1).
    #[test]
    fn position_ids_bert_and_roberta() {
        let mask =
            Tensor::<B, 2, Int>::from_data([[1, 1, 1, 0], [1, 1, 0, 0]], &Default::default());
        let bert = position_ids(&mask, None).into_data();
        assert_eq!(bert, TensorData::from([[0i64, 1, 2, 3], [0, 1, 2, 3]]));
        let roberta = position_ids(&mask, Some(1)).into_data();
        assert_eq!(roberta, TensorData::from([[2i64, 3, 4, 1], [2, 3, 1, 1]]));
    }

    /// Records every hook call; optionally replicates the batch at the first sub-layer end, as
    /// AdapterHub's `Parallel` does.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        replicate: bool,
    }

    impl Hooks<B> for Recorder {
        fn project(
            &mut self,
            layer: usize,
            site: Projection,
            linear: &Linear<B>,
            x: Tensor<B, 3>,
        ) -> Tensor<B, 3> {
            self.calls.push(format!("{layer}:{site:?}"));
            linear.forward(x)
        }
        fn attention_kv(&mut self, layer: usize, kv: AttentionKv<B>) -> AttentionKv<B> {
            self.calls.push(format!("{layer}:kv{:?}", kv.keep.dims()));
            kv
        }
        fn sublayer_end(
            &mut self,
            layer: usize,
            site: SubLayer,
            output: Tensor<B, 3>,
            residual: Tensor<B, 3>,
            layer_norm: &LayerNorm<B>,
        ) -> Tensor<B, 3> {
            self.calls.push(format!("{layer}:{site:?}"));
            let out = layer_norm.forward(output + residual);
            if self.replicate && layer == 0 && site == SubLayer::FeedForward {
                out.repeat_dim(0, 2)
            } else {
                out
            }
        }
    }

    /// Every site is called once per layer, in the order a token passes them.
    #[test]
    fn hooks_are_called_at_every_site_in_order() {
        let model = tiny().init::<B>(false, &Default::default());
        let mut rec = Recorder::default();
        model.forward_with(
            &input([[1, 2, 3, 0], [4, 5, 0, 0]], [[1, 1, 1, 0], [1, 1, 0, 0]]),
            &mut rec,
        );
        let per_layer = |l: usize| {
            [
                "Query",
                "Key",
                "Value",
                "kv[2, 4]",
                "AttentionOutput",
                "Attention",
                "Intermediate",
                "Output",
                "FeedForward",
            ]
            .map(|s| format!("{l}:{s}"))
        };
        let expected: Vec<String> = (0..2).flat_map(per_layer).collect();
        assert_eq!(rec.calls, expected);
    }

    /// A hook that replicates the batch gets the mask replicated too: each copy equals the plain
    /// forward of the original batch.
    #[test]
    fn replicated_batch_keeps_its_mask() {
        let model = tiny().init::<B>(false, &Default::default());
        let x = input([[1, 2, 3, 0], [4, 5, 0, 0]], [[1, 1, 1, 0], [1, 1, 0, 0]]);
        let plain = model.forward(&x);
        let mut rec = Recorder {
            replicate: true,
            ..Default::default()
        };
        let out = model.forward_with(&x, &mut rec);
        assert_eq!(out.last_hidden_state.dims(), [4, 4, 8]);
        assert!(
            rec.calls.contains(&"1:kv[4, 4]".to_string()),
            "{:?}",
            rec.calls
        );
        let twice = Tensor::cat(
            vec![plain.last_hidden_state.clone(), plain.last_hidden_state],
            0,
        );
        out.last_hidden_state
            .into_data()
            .assert_approx_eq::<f32>(&twice.into_data(), Tolerance::absolute(1e-6));
    }

    /// GELU is the exact erf form: closed-form values Φ(x)·x.
    #[test]
    fn gelu_is_exact_erf() {
        let x = Tensor::<B, 1>::from_floats([-2.0, -0.5, 0.0, 1.0, 3.0], &Default::default());
        // x·Φ(x) with Φ from the standard normal table (erf to 1e-9).
        let expected = [
            -0.045_500_264,
            -0.154_268_77,
            0.0,
            0.841_344_75,
            2.995_950_3,
        ];
        kernels::gelu(x)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from(expected), Tolerance::absolute(1e-6));
    }

    /// Under autodiff, d GELU/dx is the exact Φ(x) + x·φ(x), not the tanh approximation's.
    #[test]
    fn gelu_gradient_is_exact() {
        type A = burn::backend::Autodiff<B>;
        let xs = [-2.0f64, -0.5, 0.3, 1.0, 3.0];
        let x = Tensor::<A, 1>::from_floats([-2.0, -0.5, 0.3, 1.0, 3.0], &Default::default())
            .require_grad();
        let grads = kernels::gelu(x.clone()).sum().backward();
        let got = x.grad(&grads).unwrap();
        // Φ(x) + x·φ(x), with erf from its own series.
        let expected: Vec<f32> = xs
            .iter()
            .map(|&v| {
                let phi = (-v * v / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let cdf = 0.5 * (1.0 + erf_series(v / std::f64::consts::SQRT_2));
                (cdf + v * phi) as f32
            })
            .collect();
        got.into_data()
            .assert_approx_eq::<f32>(&TensorData::new(expected, [5]), Tolerance::absolute(1e-6));
    }

    /// erf by its Maclaurin series (converges fast for |x| < 3), independent of Burn's erf.
    fn erf_series(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..80 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// LayerNorm with γ=1, β=0 against (x − mean) / sqrt(biased var + ε) computed by hand.
    #[test]
    fn layer_norm_closed_form() {
        let norm = LayerNormConfig::new(4)
            .with_epsilon(1e-12)
            .init::<B>(&Default::default());
        let x = Tensor::<B, 2>::from_floats([[1.0, 2.0, 3.0, 6.0]], &Default::default());
        // mean 3, biased variance (4+1+0+9)/4 = 3.5
        let s = 3.5f32.sqrt();
        let expected = [[-2.0 / s, -1.0 / s, 0.0, 3.0 / s]];
        norm.forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from(expected), Tolerance::absolute(1e-6));
    }

    /// A padded key gets exactly zero attention: the output of the real tokens does not depend on
    /// what stands in the padded positions.
    #[test]
    fn masked_softmax_ignores_padding() {
        let model = tiny().init::<B>(false, &Default::default());
        let mask = [[1, 1, 1, 0], [1, 1, 0, 0]];
        let a = model.forward(&input([[1, 2, 3, 0], [4, 5, 0, 0]], mask));
        let b = model.forward(&input([[1, 2, 3, 9], [4, 5, 7, 8]], mask));
        let real = |o: &EncoderOutput<B>| o.last_hidden_state.clone().slice([0..2, 0..2]);
        real(&a)
            .into_data()
            .assert_approx_eq::<f32>(&real(&b).into_data(), Tolerance::absolute(1e-6));
    }

    /// Attention on a single head equals softmax(q·kᵀ/√d)·v written out with scalars.
    #[test]
    fn attention_matches_hand_computation() {
        let device = Default::default();
        let mut config = tiny();
        config.num_attention_heads = 1;
        let mut model = config.init::<B>(false, &device);
        let attn = &mut model.encoder.layer[0].attention.self_attention;
        for lin in [&mut attn.query, &mut attn.key, &mut attn.value] {
            lin.weight = lin
                .weight
                .clone()
                .map(|w| w.random_like(Distribution::Default));
        }
        let hidden = Tensor::<B, 3>::random([1, 3, 8], Distribution::Default, &device);
        let keep = Tensor::<B, 2>::from_floats([[1.0, 1.0, 0.0]], &device);
        let got = attn.forward(0, hidden.clone(), keep, &mut NoHooks);

        let rows = |t: Tensor<B, 3>| -> Vec<Vec<f32>> {
            let v = t.into_data().to_vec::<f32>().unwrap();
            v.chunks(8).map(<[f32]>::to_vec).collect()
        };
        let q = rows(attn.query.forward(hidden.clone()));
        let k = rows(attn.key.forward(hidden.clone()));
        let v = rows(attn.value.forward(hidden));
        let mut expected = vec![];
        for qi in &q {
            let s: Vec<f32> = (0..2)
                .map(|j| qi.iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f32>() / 8f32.sqrt())
                .collect();
            let m = s[0].max(s[1]);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z = e[0] + e[1];
            expected.extend((0..8).map(|d| (e[0] * v[0][d] + e[1] * v[1][d]) / z));
        }
        got.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, [1, 3, 8]),
            Tolerance::absolute(1e-5),
        );
    }

    /// The first-position path equals the full pass at that position (and leaves the pooler as
    /// it is), with padding in the batch.
    #[test]
    fn first_position_equals_full_pass() {
        let model = tiny().init::<B>(true, &Default::default());
        let x = input([[1, 2, 3, 0], [4, 5, 0, 0]], [[1, 1, 1, 0], [1, 1, 0, 0]]);
        let full = model.run(Start::Tokens(&x), &mut NoHooks);
        let first = model.run_for(Start::Tokens(&x), &mut NoHooks, Positions::First);
        assert_eq!(first.last_hidden_state.dims(), [2, 1, 8]);
        assert_eq!(first.keep.dims(), [2, 1]);
        first.last_hidden_state.into_data().assert_approx_eq::<f32>(
            &full.last_hidden_state.narrow(1, 0, 1).into_data(),
            Tolerance::absolute(1e-6),
        );
        first
            .pooler_output
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(
                &full.pooler_output.unwrap().into_data(),
                Tolerance::absolute(1e-6),
            );
    }

    /// Mean pooling divides by the number of real tokens only.
    #[test]
    fn mean_pooling_weights_by_mask() {
        let device = Default::default();
        let out = EncoderOutput::<B> {
            last_hidden_state: Tensor::from_floats(
                [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]],
                &device,
            ),
            keep: Tensor::from_floats([[1.0, 1.0, 0.0]], &device),
            pooler_output: None,
        };
        out.mean_pooled()
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([[2.0, 3.0]]), Tolerance::absolute(1e-6));
    }
}
