//! [`FusedOps`] under autodiff: each fused op is one node of the graph whose backward calls the
//! inner backend's fused backward, and whose state is only what that backward reads (the linear
//! keeps its input only when the weight trains, the attention keeps K only for dQ, …). The
//! backward methods themselves keep their composed defaults here (double backward composes).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use crate::{AttentionOptions, AttentionSaved, DropoutDraw, FusedOps, NormSaved};

type Tensor<B, C> = FloatTensor<Autodiff<B, C>>;

/// Registers `grad` for parent `index` if that parent is tracked.
fn register<B: FusedOps, const N: usize>(
    ops: &Ops<impl Clone, N>,
    grads: &mut Gradients,
    index: usize,
    grad: Option<FloatTensor<B>>,
) {
    if let (Some(parent), Some(grad)) = (&ops.parents[index], grad) {
        grads.register::<B>(parent.id, grad);
    }
}

#[derive(Debug)]
struct LinearBackward<const N: usize>;

impl<B: FusedOps, const N: usize> Backward<B, N> for LinearBackward<N> {
    /// The input (kept when the weight trains) and the weight (kept when the input needs a gradient).
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let x = ops
            .state
            .0
            .map(|id| ck.retrieve_node_output::<FloatTensor<B>>(id));
        let w = ops
            .state
            .1
            .map(|id| ck.retrieve_node_output::<FloatTensor<B>>(id));
        let wanted = std::array::from_fn(|i| i < N && ops.parents[i].is_some());
        let g = B::fused_linear_backward(x, w, grad, wanted);
        for (i, g) in g.into_iter().enumerate().take(N) {
            register::<B, N>(&ops, grads, i, g);
        }
    }
}

fn linear<B: FusedOps, C: CheckpointStrategy, const N: usize>(
    inputs: [Tensor<B, C>; N],
) -> Tensor<B, C> {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    let forward = |inputs: [Tensor<B, C>; N]| {
        let mut prims = inputs.into_iter().map(|t| t.primitive);
        let (x, w) = (prims.next().expect("x"), prims.next().expect("weight"));
        B::fused_linear(x, w, prims.next())
    };
    match LinearBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x = inputs[1].is_tracked().then(|| prep.checkpoint(&inputs[0]));
            let w = inputs[0].is_tracked().then(|| prep.checkpoint(&inputs[1]));
            prep.finish((x, w), forward(inputs))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(inputs)),
    }
}

/// The per-token products: `Dots(rows, probe)` and `Mix(weights, rows)`, each `f(x, y)` bilinear,
/// so each input's gradient reads only the other input.
#[derive(Debug, Clone, Copy)]
enum Product {
    Dots,
    Mix,
}

impl Product {
    fn forward<B: FusedOps>(self, x: FloatTensor<B>, y: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Self::Dots => B::fused_dots(x, y),
            Self::Mix => B::fused_mix(x, y),
        }
    }
}

#[derive(Debug)]
struct ProductBackward(Product);

impl<B: FusedOps> Backward<B, 2> for ProductBackward {
    /// `x` (kept when `y` needs a gradient) and `y` (kept when `x` does).
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x, y] = [ops.state.0, ops.state.1].map(|id| id.map(|id| ck.retrieve_node_output(id)));
        let (dx, dy) = match self.0 {
            // d rows = grad ⊗ probe, d probe = Σ_i grad_i·rows_i.
            Product::Dots => (
                y.clone().map(|probe| B::fused_outer(grad.clone(), probe)),
                x.map(|rows| B::fused_mix(grad, rows)),
            ),
            // d weights = rows · grad, d rows = weights ⊗ grad.
            Product::Mix => (
                y.map(|rows| B::fused_dots(rows, grad.clone())),
                x.map(|weights| B::fused_outer(weights, grad)),
            ),
        };
        register::<B, 2>(&ops, grads, 0, dx);
        register::<B, 2>(&ops, grads, 1, dy);
    }
}

fn product<B: FusedOps, C: CheckpointStrategy>(
    kind: Product,
    x: Tensor<B, C>,
    y: Tensor<B, C>,
) -> Tensor<B, C> {
    match ProductBackward(kind)
        .prepare::<C>([x.node.clone(), y.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let kx = y.is_tracked().then(|| prep.checkpoint(&x));
            let ky = x.is_tracked().then(|| prep.checkpoint(&y));
            prep.finish((kx, ky), kind.forward::<B>(x.primitive, y.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(kind.forward::<B>(x.primitive, y.primitive)),
    }
}

#[derive(Debug)]
struct GeluBackward;

impl<B: FusedOps> Backward<B, 1> for GeluBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let x = ck.retrieve_node_output::<FloatTensor<B>>(ops.state);
        register::<B, 1>(&ops, grads, 0, Some(B::fused_gelu_backward(x, grad)));
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl<B: FusedOps> Backward<B, 1> for DropoutBackward {
    type State = (DropoutDraw, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (draw, mask) = ops.state.clone();
        register::<B, 1>(
            &ops,
            grads,
            0,
            Some(B::fused_dropout_backward(grad, draw, mask)),
        );
    }
}

/// What the attention backward reads: K for dQ, Q for dK, V for both, the probabilities always.
#[derive(Debug, Clone)]
struct AttentionState<B: FusedOps> {
    q: Option<FloatTensor<B>>,
    k: Option<FloatTensor<B>>,
    v: Option<FloatTensor<B>>,
    keep: FloatTensor<B>,
    saved: AttentionSaved<B>,
    options: AttentionOptions,
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: FusedOps> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let wanted = std::array::from_fn(|i| ops.parents[i].is_some());
        let s = ops.state.clone();
        let g =
            B::fused_attention_backward(s.q, s.k, s.v, s.keep, s.saved, grad, s.options, wanted);
        for (i, g) in g.into_iter().enumerate() {
            register::<B, 3>(&ops, grads, i, g);
        }
    }
}

/// Which parent slots of a LayerNorm node hold the residual and β (x and γ are 0 and 1).
#[derive(Debug, Clone, Copy)]
struct NormSlots {
    residual: Option<usize>,
    beta: Option<usize>,
}

#[derive(Debug)]
struct NormBackward<const N: usize>;

impl<B: FusedOps, const N: usize> Backward<B, N> for NormBackward<N> {
    type State = (NormSaved<B>, FloatTensor<B>, NormSlots);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (saved, gamma, slots) = ops.state.clone();
        let tracked = |slot: Option<usize>| slot.is_some_and(|i| ops.parents[i].is_some());
        let wanted = [
            tracked(Some(0)) || tracked(slots.residual),
            tracked(Some(1)),
            tracked(slots.beta),
        ];
        let [dx, dgamma, dbeta] = B::fused_layer_norm_backward(saved, gamma, grad, wanted);
        if let Some(r) = slots.residual {
            register::<B, N>(&ops, grads, r, dx.clone());
        }
        register::<B, N>(&ops, grads, 0, dx);
        register::<B, N>(&ops, grads, 1, dgamma);
        if let Some(b) = slots.beta {
            register::<B, N>(&ops, grads, b, dbeta);
        }
    }
}

fn layer_norm<B: FusedOps, C: CheckpointStrategy, const N: usize>(
    inputs: [Tensor<B, C>; N],
    slots: NormSlots,
    epsilon: f64,
) -> Tensor<B, C> {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    let prims = inputs.map(|t| t.primitive);
    let x = prims[0].clone();
    let gamma = prims[1].clone();
    let residual = slots.residual.map(|i| prims[i].clone());
    let beta = slots.beta.map(|i| prims[i].clone());
    match NormBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, saved) = B::fused_layer_norm(x, residual, gamma.clone(), beta, epsilon, true);
            let saved = saved.expect("asked to save");
            prep.finish((saved, gamma, slots), y)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::fused_layer_norm(x, residual, gamma, beta, epsilon, false).0)
        }
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_linear(
        x: Tensor<B, C>,
        weight: Tensor<B, C>,
        bias: Option<Tensor<B, C>>,
    ) -> Tensor<B, C> {
        match bias {
            Some(b) => linear::<B, C, 3>([x, weight, b]),
            None => linear::<B, C, 2>([x, weight]),
        }
    }

    fn fused_dots(rows: Tensor<B, C>, probe: Tensor<B, C>) -> Tensor<B, C> {
        product::<B, C>(Product::Dots, rows, probe)
    }

    fn fused_mix(weights: Tensor<B, C>, rows: Tensor<B, C>) -> Tensor<B, C> {
        product::<B, C>(Product::Mix, weights, rows)
    }

    fn fused_gelu(x: Tensor<B, C>) -> Tensor<B, C> {
        match GeluBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::fused_gelu(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.primitive)),
        }
    }

    fn fused_dropout(x: Tensor<B, C>, draw: DropoutDraw) -> (Tensor<B, C>, Option<Tensor<B, C>>) {
        let out = match DropoutBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mask) = B::fused_dropout(x.primitive, draw);
                prep.finish((draw, mask), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_dropout(x.primitive, draw).0),
        };
        (out, None)
    }

    fn fused_attention(
        q: Tensor<B, C>,
        k: Tensor<B, C>,
        v: Tensor<B, C>,
        keep: Tensor<B, C>,
        options: AttentionOptions,
        _save: bool,
    ) -> (Tensor<B, C>, Option<AttentionSaved<Self>>) {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        let tracked = [q.is_tracked(), k.is_tracked(), v.is_tracked()];
        let out = match AttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let scores = tracked[0] || tracked[1];
                let state = |saved| AttentionState {
                    q: tracked[1].then(|| q.primitive.clone()),
                    k: tracked[0].then(|| k.primitive.clone()),
                    v: scores.then(|| v.primitive.clone()),
                    keep: keep.primitive.clone(),
                    saved,
                    options,
                };
                let (out, saved) = B::fused_attention(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    keep.primitive.clone(),
                    options,
                    true,
                );
                let state = state(saved.expect("asked to save"));
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                let (out, _) = B::fused_attention(
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    keep.primitive,
                    options,
                    false,
                );
                prep.finish(out)
            }
        };
        (out, None)
    }

    fn fused_layer_norm(
        x: Tensor<B, C>,
        residual: Option<Tensor<B, C>>,
        gamma: Tensor<B, C>,
        beta: Option<Tensor<B, C>>,
        epsilon: f64,
        _save: bool,
    ) -> (Tensor<B, C>, Option<NormSaved<Self>>) {
        let out = match (residual, beta) {
            (None, None) => layer_norm::<B, C, 2>(
                [x, gamma],
                NormSlots {
                    residual: None,
                    beta: None,
                },
                epsilon,
            ),
            (Some(r), None) => layer_norm::<B, C, 3>(
                [x, gamma, r],
                NormSlots {
                    residual: Some(2),
                    beta: None,
                },
                epsilon,
            ),
            (None, Some(b)) => layer_norm::<B, C, 3>(
                [x, gamma, b],
                NormSlots {
                    residual: None,
                    beta: Some(2),
                },
                epsilon,
            ),
            (Some(r), Some(b)) => layer_norm::<B, C, 4>(
                [x, gamma, r, b],
                NormSlots {
                    residual: Some(2),
                    beta: Some(3),
                },
                epsilon,
            ),
        };
        (out, None)
    }
}
