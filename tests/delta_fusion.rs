//! Fusion of LoRA/IA3 adapters over their sub-layer deltas (sinew_fusion::delta), which
//! AdapterHub cannot do: one fused adapter is that adapter (checked against AdapterHub's outputs
//! for it), and the gradients of the fusion parameters equal finite differences.

mod common;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use common::{fixture_path, flat3, max_abs_diff, model_dir, model_without_dropout};
use serde_json::Value;
use sinew::backbone::FusedOps;
use sinew::backbone::{EncoderInput, Pretrained, SubLayer};
use sinew::backend::NdArrayBackend;
use sinew::fusion::{AdapterModel, FusionConfig};

type B = NdArrayBackend;
type A = Autodiff<NdArrayBackend>;

fn outputs() -> Value {
    let path = fixture_path("adapters").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn setup<Bk: FusedOps>(
    dir: &std::path::Path,
    adapters: &[&str],
) -> (AdapterModel<Bk>, EncoderInput<Bk>) {
    let device = Default::default();
    let pretrained = Pretrained::<Bk>::load(dir, None, &device).unwrap();
    let texts: Vec<String> = serde_json::from_value(outputs()["texts"].clone()).unwrap();
    let input = pretrained
        .tokenizer
        .encode(&texts)
        .unwrap()
        .to_input::<Bk>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    for name in adapters {
        model
            .load_adapter(&fixture_path("adapters").join(name), &device)
            .unwrap();
    }
    (model, input)
}

/// With one adapter the attention is 1 on it; without a value projection (the static preset)
/// the fused sub-layer is exactly the adapter's: AdapterHub's outputs for that LoRA.
#[test]
fn fusing_one_lora_is_that_lora() {
    let (mut model, input) = setup::<B>(&model_dir(), &["lora"]);
    model
        .add_fusion(&["lora"], FusionConfig::static_(), &Default::default())
        .unwrap();
    model.set_active(Some("Fuse(lora)")).unwrap();
    let out = model.forward_with_attentions(&input).unwrap();
    let want: Vec<Vec<Vec<f32>>> =
        serde_json::from_value(outputs()["cases"]["lora"]["last_hidden_state"].clone()).unwrap();
    let got = out
        .encoded
        .last_hidden_state
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let diff = max_abs_diff(&got, &flat3(&want));
    assert!(
        diff <= 1e-4,
        "fused single LoRA differs from AdapterHub's LoRA by {diff}"
    );
    // LoRA on Q and V acts in the attention sub-layers only: one attention map per layer.
    let attentions = out.fusion_attentions.unwrap();
    assert_eq!(attentions.len(), 6);
    assert!(attentions
        .iter()
        .all(|(_, site, _)| *site == SubLayer::Attention));
}

/// The loss `Σ h ⊙ c` (fixed random `c`) of `Fuse(lora_all, ia3)`: autodiff gradients of fusion
/// parameters against central finite differences.
#[test]
fn delta_fusion_gradients_match_finite_differences() {
    let dir = model_without_dropout();
    let device = Default::default();
    <A as Backend>::seed(&device, 7);
    let (mut model, input) = setup::<A>(dir.path(), &["lora_all", "ia3"]);
    let name = model
        .add_fusion(&["lora_all", "ia3"], FusionConfig::dynamic(), &device)
        .unwrap();
    model.train_fusion(&name, false).unwrap();
    // Weights away from the near-uniform start, so every parameter matters.
    let layer = model.fusion_mut(&name).unwrap().output[4]
        .as_mut()
        .expect("FFN fusion at layer 4");
    let random = |shape: [usize; 2], std: f64| {
        Param::from_tensor(Tensor::<A, 2>::random(
            shape,
            Distribution::Normal(0.0, std),
            &device,
        ))
    };
    let h = 384;
    layer.query.as_mut().unwrap().weight = random([h, h], 0.1);
    layer.key.as_mut().unwrap().weight = random([h, h], 0.1);
    let dims = model
        .forward(&input)
        .unwrap()
        .encoded
        .last_hidden_state
        .dims();
    let c = Tensor::<A, 3>::random(dims, Distribution::Normal(0.0, 1.0), &device);
    let loss = |m: &AdapterModel<A>| {
        let h = m.forward(&input).unwrap().encoded.last_hidden_state;
        (h * c.clone()).sum() / (c.dims().iter().product::<usize>() as f64).sqrt()
    };
    let grads = loss(&model).backward();
    type Pick = fn(&mut AdapterModel<A>) -> &mut Param<Tensor<A, 2>>;
    let picks: [(&str, Pick); 2] = [
        ("query.weight", |m| {
            &mut m.fusion_mut(["lora_all", "ia3"]).unwrap().output[4]
                .as_mut()
                .unwrap()
                .query
                .as_mut()
                .unwrap()
                .weight
        }),
        ("value.weight", |m| {
            &mut m.fusion_mut(["lora_all", "ia3"]).unwrap().output[4]
                .as_mut()
                .unwrap()
                .value
                .as_mut()
                .unwrap()
                .weight
        }),
    ];
    for (what, pick) in picks {
        let param = pick(&mut model).clone();
        let grad = param
            .grad(&grads)
            .expect("trained")
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // The entry with the largest gradient.
        let (k, &g) = grad
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let base = param.val().into_data().to_vec::<f32>().unwrap();
        let eps = 1e-2f32;
        let mut at = |delta: f32| {
            let mut values = base.clone();
            values[k] += delta;
            *pick(&mut model) =
                Param::from_tensor(Tensor::from_data(TensorData::new(values, [h, h]), &device));
            loss(&model).into_scalar()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        for e in [1e-1f32, 3e-2, 3e-3, 1e-3] {
            eprintln!("eps {e}: fd {}", (at(e) - at(-e)) / (2.0 * e));
        }
        *pick(&mut model) = param;
        eprintln!("{what}[{k}]: autodiff {g:.5e}, finite differences {fd:.5e}");
        assert!(g.abs() > 1e-3, "{what}: a gradient worth testing");
        assert!(
            (fd - g).abs() <= 0.03 * g.abs() + 1e-3,
            "{what}: {g} vs {fd}"
        );
    }
    // The frozen backbone and adapters got none.
    let q = &model.backbone().encoder.layer[0]
        .attention
        .self_attention
        .query;
    assert!(q.weight.grad(&grads).is_none());
}

/// Bottleneck and LoRA adapters fuse separately; prefix tuning does not fuse.
#[test]
fn mixed_fusions_are_refused() {
    let (mut model, _) = setup::<B>(&model_dir(), &["lora", "seq_bn", "prefix"]);
    let device = Default::default();
    let err = model
        .add_fusion(&["lora", "seq_bn"], FusionConfig::dynamic(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fuse separately"), "{err}");
    let err = model
        .add_fusion(&["lora", "prefix"], FusionConfig::dynamic(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not prefix or prompt tuning"), "{err}");
}
