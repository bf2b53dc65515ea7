//! The fused ops one by one against Burn's own ops, at all-MiniLM-L6-v2's shapes (hidden 384,
//! 12 heads of 32, FFN 1536) for the training step (32 × 128 tokens) and inference (64 × 128),
//! forward and forward + backward, on ndarray and flex. `tools/reference/bench_ops.py` times
//! PyTorch's twins (`F.gelu`, `F.layer_norm`, `F.scaled_dot_product_attention`, `F.softmax`,
//! `F.linear`) on the same shapes; `tools/bench-adapters.sh` puts both in BENCHMARKS.md.
//!
//! `cargo bench --bench kernels --features flex` — groups `op_<op>_<batch>x<seq>`, functions
//! `<backend>/<sinew|burn>/<forward|forward_backward>`.

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::nn::{LayerNormConfig as BurnNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu as burn_gelu, softmax};
use burn::tensor::Distribution;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sinew::backbone::FusedOps;
use sinew::kernels::{self, LayerNormConfig};

const HIDDEN: usize = 384;
const HEADS: usize = 12;
const FFN: usize = 1536;

fn random<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

/// Times `f` forward, and forward + backward from an output gradient of ones (Burn seeds
/// `backward()` with ones of the output's shape; PyTorch's twin passes the same), so the time is
/// the op's and not that of a loss built around it.
fn pair<B: FusedOps, const D: usize>(
    c: &mut Criterion,
    group: &str,
    id: &str,
    inputs: &[Tensor<Autodiff<B>, D>],
    f: impl Fn(&[Tensor<Autodiff<B>, D>]) -> Tensor<Autodiff<B>, D>,
    forward: impl Fn(&[Tensor<B, D>]) -> Tensor<B, D>,
) {
    let plain: Vec<Tensor<B, D>> = inputs.iter().map(|t| t.clone().inner()).collect();
    let tracked: Vec<Tensor<Autodiff<B>, D>> =
        inputs.iter().map(|t| t.clone().require_grad()).collect();
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    g.bench_function(BenchmarkId::new(id, "forward"), |b| {
        b.iter(|| forward(&plain).into_data())
    });
    g.bench_function(BenchmarkId::new(id, "forward_backward"), |b| {
        b.iter(|| {
            let grads = f(&tracked).backward();
            tracked[0].grad(&grads).map(|g| g.into_data())
        })
    });
    g.finish();
}

/// Burn's own fused attention (`module::attention`), with the key mask expanded as it takes it.
fn burn_attention<B: Backend>(t: &[Tensor<B, 4>], keep: Tensor<B, 2>) -> Tensor<B, 4> {
    let [batch, heads, seq, _] = t[0].dims();
    let mask = keep
        .equal_elem(0.0)
        .reshape([batch, 1, 1, seq])
        .expand([batch, heads, seq, seq]);
    burn::tensor::module::attention(
        t[0].clone(),
        t[1].clone(),
        t[2].clone(),
        Some(mask),
        None,
        Default::default(),
    )
}

fn bench_backend<B: FusedOps>(c: &mut Criterion, backend: &str) {
    type A<B> = Autodiff<B>;
    for (batch, seq) in [(32usize, 128usize), (64, 128)] {
        let rows = batch * seq;
        let size = format!("{batch}x{seq}");
        let id = |kind: &str| format!("{backend}/{kind}");

        let x = [random::<A<B>, 2>([rows, FFN])];
        let group = format!("op_gelu_{size}");
        pair::<B, 2>(
            c,
            &group,
            &id("sinew"),
            &x,
            |t| kernels::gelu(t[0].clone()),
            |t| kernels::gelu(t[0].clone()),
        );
        pair::<B, 2>(
            c,
            &group,
            &id("burn"),
            &x,
            |t| burn_gelu(t[0].clone()),
            |t| burn_gelu(t[0].clone()),
        );

        let xr = [
            random::<A<B>, 2>([rows, HIDDEN]),
            random::<A<B>, 2>([rows, HIDDEN]),
        ];
        let ours = LayerNormConfig::new(HIDDEN)
            .with_epsilon(1e-12)
            .init::<A<B>>(&Default::default());
        let burns = BurnNormConfig::new(HIDDEN)
            .with_epsilon(1e-12)
            .init::<A<B>>(&Default::default());
        let (ours_plain, burns_plain) = (ours.valid(), burns.valid());
        let group = format!("op_add_layer_norm_{size}");
        pair::<B, 2>(
            c,
            &group,
            &id("sinew"),
            &xr,
            |t| ours.forward_add(t[0].clone(), t[1].clone()),
            |t| ours_plain.forward_add(t[0].clone(), t[1].clone()),
        );
        pair::<B, 2>(
            c,
            &group,
            &id("burn"),
            &xr,
            |t| burns.forward(t[0].clone() + t[1].clone()),
            |t| burns_plain.forward(t[0].clone() + t[1].clone()),
        );

        // q, k, v as the model lays them out: heads split from [batch, seq, hidden].
        let head = HIDDEN / HEADS;
        let split = |t: Tensor<A<B>, 3>| t.reshape([batch, seq, HEADS, head]).swap_dims(1, 2);
        let qkv: Vec<Tensor<A<B>, 4>> = (0..3)
            .map(|_| split(random([batch, seq, HIDDEN])))
            .collect();
        let keep_values: Vec<f32> = (0..rows)
            .map(|i| {
                if i / seq % 3 == 0 && i % seq >= seq * 3 / 4 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let keep = Tensor::<A<B>, 2>::from_data(
            TensorData::new(keep_values, [batch, seq]),
            &Default::default(),
        );
        let keep_plain = keep.clone().inner();
        let group = format!("op_attention_{size}");
        pair::<B, 4>(
            c,
            &group,
            &id("sinew"),
            &qkv,
            |t| {
                kernels::attention(t[0].clone(), t[1].clone(), t[2].clone(), keep.clone(), 0.0)
                    .reshape([batch, seq, HEADS, head])
            },
            |t| {
                kernels::attention(
                    t[0].clone(),
                    t[1].clone(),
                    t[2].clone(),
                    keep_plain.clone(),
                    0.0,
                )
                .reshape([batch, seq, HEADS, head])
            },
        );
        pair::<B, 4>(
            c,
            &group,
            &id("burn"),
            &qkv,
            |t| burn_attention(t, keep.clone()),
            |t| burn_attention(t, keep_plain.clone()),
        );
        let scores = [random::<A<B>, 4>([batch, HEADS, seq, seq])];
        let bias = (keep.clone().neg() + 1.0)
            .mul_scalar(f32::MIN)
            .reshape([batch, 1, 1, seq]);
        let bias_plain = bias.clone().inner();
        pair::<B, 4>(
            c,
            &format!("op_masked_softmax_{size}"),
            &id("burn"),
            &scores,
            |t| softmax(t[0].clone() + bias.clone(), 3),
            |t| softmax(t[0].clone() + bias_plain.clone(), 3),
        );

        let mut layer: Linear<A<B>> = LinearConfig::new(HIDDEN, FFN).init(&Default::default());
        layer.weight = Param::from_tensor(random([HIDDEN, FFN]) * 0.05).set_require_grad(false);
        layer.bias = layer.bias.map(|b| b.set_require_grad(false));
        let plain_layer = layer.valid();
        let x = [random::<A<B>, 2>([rows, HIDDEN])];
        let group = format!("op_linear_384x1536_{size}");
        pair::<B, 2>(
            c,
            &group,
            &id("sinew"),
            &x,
            |t| kernels::linear(&layer, t[0].clone()),
            |t| kernels::linear(&plain_layer, t[0].clone()),
        );
        pair::<B, 2>(
            c,
            &group,
            &id("burn"),
            &x,
            |t| layer.forward(t[0].clone()),
            |t| plain_layer.forward(t[0].clone()),
        );
    }
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "ndarray")]
    bench_backend::<sinew::backend::NdArrayBackend>(c, "ndarray");
    #[cfg(feature = "flex")]
    bench_backend::<sinew::backend::FlexBackend>(c, "flex");
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
