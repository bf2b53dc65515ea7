//! Gradient clipping by the global L2 norm over every trained parameter, as PyTorch's
//! `torch.nn.utils.clip_grad_norm_`. Burn's `GradientClippingConfig::Norm` clips each tensor on
//! its own, which changes the direction of the update and is not the recipe AdapterHub uses.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;

/// Scales every gradient of `module`'s parameters in `grads` by `max_norm / (norm + 1e-6)` when
/// that is below 1, where `norm` is the L2 norm of all of them together (PyTorch's formula,
/// epsilon included); returns `norm`.
pub(crate) fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f32,
) -> f32 {
    let mut squares = SquaredNorms::<B> {
        grads,
        sums: Vec::new(),
    };
    module.visit(&mut squares);
    let Some(total) = squares
        .sums
        .into_iter()
        .reduce(|a, b| a + b)
        .map(|sum| sum.sqrt().into_scalar().elem::<f32>())
    else {
        return 0.0;
    };
    let scale = max_norm / (total + 1e-6);
    if scale < 1.0 {
        module.visit(&mut Scale { grads, scale });
    }
    total
}

/// Sums of squares of each parameter's gradient, kept on the device (one read at the end).
struct SquaredNorms<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sums.push(grad.square().sum());
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    scale: f32,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id: ParamId = param.id;
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) {
            self.grads.register(id, grad.mul_scalar(self.scale));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<NdArray>;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    /// Gradients with a known global norm: `a`'s weight (3×2) all 1 and its bias (2) all 2,
    /// `b`'s weight (2×1) all 3 and bias 4 → norm² = 6 + 8 + 18 + 16 = 48.
    fn model_and_grads() -> (Two<B>, GradientsParams) {
        with_grads(&[vec![1.0; 6], vec![2.0; 2], vec![3.0; 2], vec![4.0]])
    }

    /// Two layers (3→2, 2→1) with `values` as the gradients of a's weight and bias, then b's.
    fn with_grads(values: &[Vec<f32>]) -> (Two<B>, GradientsParams) {
        let device = Default::default();
        let model = Two::<B> {
            a: LinearConfig::new(3, 2).init(&device),
            b: LinearConfig::new(2, 1).init(&device),
        };
        let mut grads = GradientsParams::new();
        let t = |v: &[f32]| Tensor::<NdArray, 1>::from_floats(v, &device);
        grads.register(model.a.weight.id, t(&values[0]).reshape([3, 2]));
        grads.register(model.a.bias.as_ref().unwrap().id, t(&values[1]));
        grads.register(model.b.weight.id, t(&values[2]).reshape([2, 1]));
        grads.register(model.b.bias.as_ref().unwrap().id, t(&values[3]));
        (model, grads)
    }

    /// `torch.nn.utils.clip_grad_norm_` on the same gradients (tests/fixtures/clip.json, written
    /// by tools/reference/make_clip_fixtures.py): the same total norm and clipped gradients.
    #[test]
    fn equals_pytorchs_clip_grad_norm() {
        #[derive(serde::Deserialize)]
        struct Case {
            max_norm: f32,
            total_norm: f32,
            clipped: Vec<Vec<f32>>,
        }
        #[derive(serde::Deserialize)]
        struct Fixture {
            grads: Vec<Vec<f32>>,
            cases: Vec<Case>,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/clip.json"
        );
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            fixture.cases.len(),
            2,
            "a limit that clips and one that does not"
        );
        for case in &fixture.cases {
            let (model, mut grads) = with_grads(&fixture.grads);
            let norm = clip_global_norm(&model, &mut grads, case.max_norm);
            assert!(
                (norm - case.total_norm).abs() <= 1e-6 * case.total_norm,
                "norm {norm} vs PyTorch's {}",
                case.total_norm
            );
            let got = values(&model, &grads);
            let want = case.clipped.concat();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * scale,
                    "max_norm {}: {got:?} vs PyTorch's {want:?}",
                    case.max_norm
                );
            }
        }
    }

    fn values(model: &Two<B>, grads: &GradientsParams) -> Vec<f32> {
        let mut out = Vec::new();
        let w = |id| {
            grads
                .get::<NdArray, 2>(id)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
        };
        let v = |id| {
            grads
                .get::<NdArray, 1>(id)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
        };
        out.extend(w(model.a.weight.id).unwrap());
        out.extend(v(model.a.bias.as_ref().unwrap().id).unwrap());
        out.extend(w(model.b.weight.id).unwrap());
        out.extend(v(model.b.bias.as_ref().unwrap().id).unwrap());
        out
    }

    #[test]
    fn the_global_norm_scales_every_gradient_alike() {
        let (model, mut grads) = model_and_grads();
        let norm = clip_global_norm(&model, &mut grads, 1.0);
        let want = 48f32.sqrt();
        assert!(
            (norm - want).abs() <= 1e-6 * want,
            "norm {norm}, want {want}"
        );
        let scale = 1.0 / (want + 1e-6);
        let expected: Vec<f32> = [[1.0; 6].as_slice(), &[2.0; 2], &[3.0; 2], &[4.0]]
            .concat()
            .iter()
            .map(|g| g * scale)
            .collect();
        let got = values(&model, &grads);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-6 * e.abs(), "{got:?} vs {expected:?}");
        }
        // Per-tensor clipping would leave `a`'s weight (norm √6 > 1) at 1/√6 each, not 1/√48.
        assert!((got[0] - 1.0 / 6f32.sqrt()).abs() > 0.1);
    }

    #[test]
    fn gradients_under_the_limit_are_left_alone() {
        let (model, mut grads) = model_and_grads();
        let norm = clip_global_norm(&model, &mut grads, 10.0);
        assert!((norm - 48f32.sqrt()).abs() <= 1e-5);
        assert_eq!(
            values(&model, &grads),
            [[1.0; 6].as_slice(), &[2.0; 2], &[3.0; 2], &[4.0]].concat()
        );
    }
}
