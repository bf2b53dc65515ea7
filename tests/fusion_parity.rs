//! AdapterFusion and composition blocks against AdapterHub (fixtures from
//! tools/reference/make_fusion_fixtures.py: random non-zero adapters and fusions saved by the
//! library itself): hidden states, logits of every head and fusion attentions to 1e-4, fusion
//! gradients to 1e-3, on ndarray; and the CLI on the same folders.

mod common;

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use common::{fixture_path, max_abs_diff, model_dir, model_without_dropout, sinew};
use serde::Deserialize;
use serde_json::Value;
use sinew::adapter::tensors::TensorFile;
use sinew::backbone::{EncoderInput, Pretrained, SubLayer};
use sinew::backbone::{FusedAutodiff, FusedOps};
use sinew::backend::NdArrayBackend;
use sinew::fusion::{AdapterModel, Semantics, Setup};

type B = NdArrayBackend;
type A = Autodiff<NdArrayBackend>;

#[derive(Deserialize)]
struct Grad {
    shape: Vec<usize>,
}

#[derive(Deserialize)]
struct Case {
    setup: String,
    last_hidden_state: Value,
    logits: Vec<Value>,
    heads: Vec<String>,
    #[serde(default)]
    fusion_attentions: BTreeMap<String, Value>,
    #[serde(default)]
    loss: Option<f32>,
    #[serde(default)]
    grads: BTreeMap<String, Grad>,
}

#[derive(Deserialize)]
struct Outputs {
    texts: Vec<String>,
    labels: Vec<i64>,
    cases: BTreeMap<String, Case>,
}

fn outputs() -> Outputs {
    let path = fixture_path("fusion").join("outputs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn flatten(value: &Value) -> Vec<f32> {
    match value {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        v => vec![v.as_f64().expect("a number") as f32],
    }
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

const ADAPTERS: [&str; 5] = ["seq_a", "seq_b", "seq_c", "dbl_a", "dbl_b"];

/// The real model with every fixture adapter and fusion loaded, and the fixture batch.
fn loaded<Bk: FusedOps>(model_dir: &std::path::Path) -> (AdapterModel<Bk>, EncoderInput<Bk>) {
    let (mut model, input) = with_adapters::<Bk>(model_dir);
    let dir = fixture_path("fusion");
    for case in ["fuse_dynamic", "fuse_static", "fuse_knobs"] {
        model
            .load_fusion(&dir.join("fusions").join(case), &Default::default())
            .unwrap();
    }
    (model, input)
}

/// The backbone with the fixture's adapters, no fusion.
fn with_adapters<Bk: FusedOps>(
    model_dir: &std::path::Path,
) -> (AdapterModel<Bk>, EncoderInput<Bk>) {
    let device = Default::default();
    let pretrained = Pretrained::<Bk>::load(model_dir, None, &device).unwrap();
    let input = pretrained
        .tokenizer
        .encode(&outputs().texts)
        .unwrap()
        .to_input::<Bk>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let dir = fixture_path("fusion");
    for name in ADAPTERS {
        model
            .load_adapter(&dir.join("adapters").join(name), &device)
            .unwrap();
    }
    (model, input)
}

#[test]
fn setups_match_adapterhub_on_ndarray() {
    setups_match::<B>();
}

#[cfg(feature = "flex")]
#[test]
fn setups_match_adapterhub_on_flex() {
    setups_match::<sinew::backend::FlexBackend>();
}

#[cfg(feature = "wgpu")]
#[test]
fn setups_match_adapterhub_on_wgpu() {
    setups_match::<sinew::backend::WgpuBackend>();
}

fn setups_match<Bk: FusedOps>() {
    let (mut model, input) = loaded::<Bk>(&model_dir());
    // Average's 1/N is AdapterHub's; the other cases do not depend on the semantics.
    model.set_semantics(Semantics::AdapterHub);
    let plain = values(model.backbone().forward(&input).last_hidden_state);
    let out = outputs();
    assert_eq!(out.cases.len(), 7);
    for (name, case) in &out.cases {
        model.set_active(Some(&case.setup)).unwrap();
        let got = model.forward_with_attentions(&input).unwrap();
        let want = flatten(&case.last_hidden_state);
        let hidden = values(got.encoded.last_hidden_state);
        if hidden.len() == plain.len() {
            assert!(
                max_abs_diff(&plain, &want) > 1e-2,
                "{name}: the setup must change the output"
            );
        }
        let diff = max_abs_diff(&hidden, &want);
        eprintln!("{name}: last_hidden_state max |diff| {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: hidden states differ by {diff}");

        // AdapterHub keeps the previous head for Average (it picks none): compare ours with the
        // head of the same name.
        // (AdapterHub names a BatchSplit's heads as one `BatchSplit[…]`: its outputs are in order.)
        for (k, head) in got.heads.iter().enumerate() {
            let i = case.heads.iter().position(|h| *h == head.name).unwrap_or(k);
            let logits = match &head.logits {
                sinew::adapter::HeadLogits::Text(l) => values(l.clone()),
                sinew::adapter::HeadLogits::Tokens(l) => values(l.clone()),
            };
            let diff = max_abs_diff(&logits, &flatten(&case.logits[i]));
            eprintln!("{name}: head {} logits max |diff| {diff:.2e}", head.name);
            assert!(
                diff <= 1e-4,
                "{name}: head {} logits differ by {diff}",
                head.name
            );
        }
        // AdapterHub's Average keeps the previous setup's heads (two here); sinew's has one.
        let heads = if name == "average" {
            1
        } else {
            case.logits.len()
        };
        assert_eq!(
            got.heads.len(),
            heads,
            "{name}: as many heads as AdapterHub's outputs"
        );

        let attentions = got.fusion_attentions.unwrap_or_default();
        assert_eq!(
            attentions.len(),
            case.fusion_attentions.len(),
            "{name}: fusion sites"
        );
        for (layer, site, attention) in attentions {
            let location = match site {
                SubLayer::Attention => "mh_adapter",
                SubLayer::FeedForward => "output_adapter",
            };
            let want = &case.fusion_attentions[&format!("{layer}.{location}")];
            let diff = max_abs_diff(&values(attention), &flatten(want));
            eprintln!("{name}: attention {layer}.{location} max |diff| {diff:.2e}");
            assert!(
                diff <= 1e-4,
                "{name}: fusion attention {layer}.{location} differs by {diff}"
            );
        }
    }
}

/// Asking for the logits only runs the last layer for the first position alone (every fixture
/// setup has text-level heads): each head's logits equal the full pass's, for every setup, for a
/// routed batch, and under autodiff the trained fusion's gradients are the full pass's too.
#[test]
fn first_position_logits_equal_the_full_pass() {
    let (mut model, input) = loaded::<B>(&model_dir());
    let heads = |out: &sinew::fusion::AdapterOutput<B>| -> Vec<Vec<f32>> {
        out.heads
            .iter()
            .map(|h| match &h.logits {
                sinew::adapter::HeadLogits::Text(l) => values(l.clone()),
                sinew::adapter::HeadLogits::Tokens(l) => values(l.clone()),
            })
            .collect()
    };
    let close = |got: &[Vec<f32>], want: &[Vec<f32>], rel: f32, what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: heads");
        for (g, w) in got.iter().zip(want) {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(g, w);
            assert!(
                diff <= rel * scale,
                "{what}: differ by {diff} (scale {scale})"
            );
        }
    };
    for (name, case) in &outputs().cases {
        model.set_active(Some(&case.setup)).unwrap();
        let full = model.forward(&input).unwrap();
        let fast = model.logits(&input).unwrap();
        let split = Setup::parse(&case.setup).unwrap().splits_positions();
        let positions = fast.encoded.last_hidden_state.dims()[1];
        assert_eq!(
            positions == 1,
            !split,
            "{name}: first position only unless Split"
        );
        close(&heads(&fast), &heads(&full), 1e-5, name);
    }
    let tasks = ["seq_b", "seq_a", "seq_b", "seq_a"];
    let full = model.forward_routed(&input, &tasks).unwrap();
    let fast = model.logits_routed(&input, &tasks).unwrap();
    assert_eq!(fast.encoded.last_hidden_state.dims()[1], 1);
    close(&heads(&fast), &heads(&full), 1e-5, "routed");

    let dir = model_without_dropout();
    let (mut model, input) = loaded::<A>(dir.path());
    let device = Default::default();
    let labels = Tensor::<A, 1, Int>::from_data(TensorData::new(outputs().labels, [4]), &device);
    model.train_fusion("seq_a,seq_b", false).unwrap();
    let grads = |logits: Tensor<A, 2>| {
        let grads = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, labels.clone())
            .backward();
        let fusion = model.fusion("seq_a,seq_b").unwrap();
        let layer = fusion.at(5, SubLayer::FeedForward).unwrap();
        let lower = fusion.at(0, SubLayer::FeedForward).unwrap();
        [layer, lower]
            .iter()
            .flat_map(|l| [&l.query, &l.key, &l.value])
            .map(|linear| {
                values(
                    linear
                        .as_ref()
                        .unwrap()
                        .weight
                        .grad(&grads)
                        .expect("trained"),
                )
            })
            .collect::<Vec<_>>()
    };
    let full = grads(model.forward(&input).unwrap().logits.unwrap());
    let again = grads(model.forward(&input).unwrap().logits.unwrap());
    close(&again, &full, 0.0, "the same pass twice");
    let fast = grads(model.logits(&input).unwrap().logits.unwrap());
    // The two passes round differently in f32 (the last layer's products have one row per text
    // instead of one per token), and AdapterFusion's unscaled softmax amplifies that in its
    // gradients to ~4e-4 of their scale: a gradient that missed a path would be off by O(1).
    close(&fast, &full, 1e-3, "fusion gradients");
}

/// A fusion read from AdapterHub's folder keeps AdapterHub's behaviour (here: `residual_before`
/// adds the residual to the keys too) under sinew's default semantics.
#[test]
fn adapterhub_fusions_keep_their_behaviour() {
    let (mut model, input) = loaded::<B>(&model_dir());
    let case = &outputs().cases["fuse_knobs"];
    model.set_active(Some(&case.setup)).unwrap();
    let hidden = values(model.forward(&input).unwrap().encoded.last_hidden_state);
    let diff = max_abs_diff(&hidden, &flatten(&case.last_hidden_state));
    assert!(diff <= 1e-4, "{diff}");
    // Saved by sinew and read back into a fresh model: still AdapterHub's outputs.
    let saved = tempfile::tempdir().unwrap();
    model
        .save_fusion(saved.path(), "seq_b,seq_c", true)
        .unwrap();
    let (mut fresh, _) = with_adapters::<B>(&model_dir());
    fresh
        .load_fusion(saved.path(), &Default::default())
        .unwrap();
    fresh.set_active(Some(&case.setup)).unwrap();
    let reloaded = values(fresh.forward(&input).unwrap().encoded.last_hidden_state);
    let diff = max_abs_diff(&reloaded, &flatten(&case.last_hidden_state));
    assert!(diff <= 1e-4, "after a sinew save and reload: {diff}");
}

/// Average's weights are a weighted average: averaging an adapter with itself is the adapter
/// (weights summing to 1), under sinew's semantics; AdapterHub's extra 1/N breaks that.
#[test]
fn average_of_one_adapter_is_that_adapter() {
    let (mut model, input) = loaded::<B>(&model_dir());
    model.set_active(Some("seq_a")).unwrap();
    let single = values(model.forward(&input).unwrap().encoded.last_hidden_state);
    model
        .set_active(Some("Average(seq_a, seq_a, weights=[0.3, 0.7])"))
        .unwrap();
    let averaged = values(model.forward(&input).unwrap().encoded.last_hidden_state);
    assert!(max_abs_diff(&single, &averaged) <= 1e-5);
    model.set_semantics(Semantics::AdapterHub);
    let halved = values(model.forward(&input).unwrap().encoded.last_hidden_state);
    assert!(max_abs_diff(&single, &halved) > 1e-2);
}

/// `train_fusion`: the loss and fusion gradients equal AdapterHub's after `train_adapter_fusion`,
/// and nothing but the fusion and its head gets a gradient.
#[test]
fn fusion_gradients_match_adapterhub_on_ndarray() {
    fusion_gradients_match::<A>();
}

#[cfg(feature = "flex")]
#[test]
fn fusion_gradients_match_adapterhub_on_flex() {
    fusion_gradients_match::<Autodiff<sinew::backend::FlexBackend>>();
}

#[cfg(feature = "wgpu")]
#[test]
fn fusion_gradients_match_adapterhub_on_wgpu() {
    fusion_gradients_match::<Autodiff<sinew::backend::WgpuBackend>>();
}

fn fusion_gradients_match<Ab: FusedAutodiff>() {
    let dir = model_without_dropout();
    let (mut model, input) = loaded::<Ab>(dir.path());
    let out = outputs();
    let device = Default::default();
    let labels = Tensor::<Ab, 1, Int>::from_data(TensorData::new(out.labels.clone(), [4]), &device);
    // Whole gradients, as PyTorch computed them (tools/reference/make_fusion_fixtures.py).
    let saved = TensorFile::read(&fixture_path("fusion").join("grads.safetensors")).unwrap();
    for (case, fusion) in [
        ("fuse_dynamic", "seq_a,seq_b"),
        ("fuse_static", "dbl_a,dbl_b"),
    ] {
        let want = &out.cases[case];
        model.train_fusion(fusion, false).unwrap();
        let (trainable, total) = model.param_counts();
        assert!(
            trainable > 0 && trainable < total / 10,
            "{case}: {trainable} of {total}"
        );
        let logits = model.forward(&input).unwrap().logits.expect("fusion head");
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, labels.clone());
        let value = values(loss.clone())[0];
        assert!(
            (value - want.loss.unwrap()).abs() < 1e-4,
            "{case}: loss {value} vs {:?}",
            want.loss
        );
        let grads = loss.backward();
        let fusion_module = model.fusion(fusion).unwrap();
        for (key, grad) in &want.grads {
            let layer: usize = key.split('.').nth(3).unwrap().parse().unwrap();
            let site = if key.contains("attention.output") {
                SubLayer::Attention
            } else {
                SubLayer::FeedForward
            };
            let l = fusion_module.at(layer, site).expect("fusion layer");
            let linear = if key.contains(".query.") {
                l.query.as_ref()
            } else if key.contains(".key.") {
                l.key.as_ref()
            } else {
                l.value.as_ref()
            }
            .unwrap();
            let got = if key.ends_with("bias") {
                param_grad(linear.bias.as_ref().unwrap(), &grads)
            } else {
                // PyTorch's [out, in] rows: Burn keeps [in, out].
                let g = linear.weight.grad(&grads).expect("trained").swap_dims(0, 1);
                values(g)
            };
            let want = &saved
                .get(&format!("{case}/{key}"))
                .unwrap_or_else(|| panic!("{case}/{key} in grads.safetensors"));
            assert_eq!(want.shape, grad.shape, "{case}: {key}");
            assert_eq!(
                got.len(),
                want.values.len(),
                "{case}: {key}: the whole tensor"
            );
            let scale = want.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                scale > 0.0,
                "{case}: {key}: a gradient that is zero tests nothing"
            );
            let diff = max_abs_diff(&got, &want.values);
            eprintln!("{case}: {key} grad max |diff| {diff:.2e} (max |grad| {scale:.2e})");
            assert!(
                diff <= 1e-3 * scale + 1e-6,
                "{case}: gradient of {key} differs by {diff} (max |grad| {scale})"
            );
        }
        assert!(!want.grads.is_empty(), "{case}: gradients to compare");
        // Frozen: the backbone and the adapters get no gradient.
        let layer = &model.backbone().encoder.layer[0]
            .attention
            .self_attention
            .query;
        assert!(
            layer.weight.grad(&grads).is_none(),
            "{case}: backbone frozen"
        );
        let Some(sinew::adapter::Adapter::Bottleneck(a)) = model.adapter("seq_a") else {
            panic!("bottleneck")
        };
        let down = &a.output[0].as_ref().unwrap().adapter_down.weight;
        assert!(down.grad(&grads).is_none(), "{case}: adapters frozen");
    }
}

fn param_grad<Ab: FusedAutodiff>(
    param: &Param<Tensor<Ab, 1>>,
    grads: &<Ab as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f32> {
    values(param.grad(grads).expect("trained"))
}

/// A fusion saved by sinew reads back to the same outputs, and keeps AdapterHub's keys.
#[test]
fn saved_fusion_reads_back() {
    let (mut model, input) = loaded::<B>(&model_dir());
    model.set_active(Some("Fuse(seq_a, seq_b)")).unwrap();
    let before = model.forward(&input).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save_fusion(dir.path(), "seq_a,seq_b", true).unwrap();
    let theirs = sinew::adapter::tensors::TensorFile::read(&fixture_path(
        "fusion/fusions/fuse_dynamic/model_adapter_fusion.safetensors",
    ))
    .unwrap();
    let ours = sinew::adapter::tensors::TensorFile::read(
        &dir.path().join("model_adapter_fusion.safetensors"),
    )
    .unwrap();
    assert_eq!(
        theirs.remaining().collect::<Vec<_>>(),
        ours.remaining().collect::<Vec<_>>()
    );
    let (mut fresh, _) = loaded::<B>(&model_dir());
    let device = Default::default();
    // Same name: load the saved copy into a model without the fixture's fusion.
    let mut other = AdapterModel::new(fresh.backbone().clone(), fresh.config().clone());
    for name in ["seq_a", "seq_b"] {
        other
            .load_adapter(&fixture_path("fusion/adapters").join(name), &device)
            .unwrap();
    }
    assert_eq!(
        other.load_fusion(dir.path(), &device).unwrap(),
        "seq_a,seq_b"
    );
    other.set_active(Some("Fuse(seq_a, seq_b)")).unwrap();
    let after = other.forward(&input).unwrap();
    let diff = max_abs_diff(
        &values(before.encoded.last_hidden_state),
        &values(after.encoded.last_hidden_state),
    );
    assert!(diff <= 1e-6, "{diff}");
    // A fusion whose adapters are missing is refused by name.
    fresh = AdapterModel::new(fresh.backbone().clone(), fresh.config().clone());
    let err = fresh
        .load_fusion(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs adapter `seq_a`"), "{err}");
}

/// Setup errors are one clear line each.
#[test]
fn bad_setups_are_named() {
    let (mut model, input) = loaded::<B>(&model_dir());
    for (setup, needle) in [
        ("Fuse(seq_a, seq_c)", "no fusion `seq_a,seq_c`"),
        ("Stack(seq_a, nope)", "unknown adapter `nope`"),
        ("Fuse(seq_a, seq_b", "expected `,` or `)`"),
    ] {
        let err = model.set_active(Some(setup)).unwrap_err().to_string();
        assert!(err.contains(needle), "{setup}: {err}");
    }
    model
        .set_active(Some("BatchSplit(seq_a, seq_b, batch_sizes=[1, 1])"))
        .unwrap();
    let err = model.forward(&input).unwrap_err().to_string();
    assert!(
        err.contains("batch_sizes sum to 2, the batch has 4 rows"),
        "{err}"
    );
    // A branch without a head next to branches with heads would leave rows without logits.
    model
        .add_adapter(
            "headless",
            sinew::adapter::MethodConfig::Bottleneck(sinew::adapter::bottleneck::BnConfig::seq_bn()),
            &Default::default(),
        )
        .unwrap();
    model.set_active(Some("Parallel(seq_a, headless)")).unwrap();
    let err = model.forward(&input).unwrap_err().to_string();
    assert!(err.contains("none named `headless`"), "{err}");
}

/// `sinew encode --adapter … --fusion DIR` gives AdapterHub's hidden states, logits and fusion
/// attentions.
#[test]
fn cli_encode_with_a_fusion() {
    let out = outputs();
    let case = &out.cases["fuse_static"];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, out.texts.join("\n")).unwrap();
    let output = dir.path().join("out.json");
    let fixtures = fixture_path("fusion");
    let arg = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let args = [
        "encode".to_string(),
        "--model".into(),
        arg(model_dir()),
        "--input".into(),
        arg(input),
        "--output".into(),
        arg(output.clone()),
        "--adapter".into(),
        arg(fixtures.join("adapters/dbl_a")),
        "--adapter".into(),
        arg(fixtures.join("adapters/dbl_b")),
        "--fusion".into(),
        arg(fixtures.join("fusions/fuse_static")),
        "--setup".into(),
        "Fuse(dbl_a, dbl_b)".into(),
        "--fusion-plot".into(),
        arg(dir.path().join("attention.svg")),
    ];
    let run = sinew(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    for (ours, theirs) in [
        (&got["last_hidden_state"], &case.last_hidden_state),
        (&got["logits"], &case.logits[0]),
        (
            &got["fusion_attentions"]["5"],
            &case.fusion_attentions["5.output_adapter"],
        ),
        (
            &got["fusion_attentions"]["5.mh_adapter"],
            &case.fusion_attentions["5.mh_adapter"],
        ),
    ] {
        let diff = max_abs_diff(&flatten(ours), &flatten(theirs));
        assert!(diff <= 1e-4, "{diff}");
    }

    // The heatmap writes the mean attention over real tokens in each cell: AdapterHub's means.
    let ids: Vec<Vec<u32>> = serde_json::from_value(got["input_ids"].clone()).unwrap();
    let mut want = Vec::new();
    for key in ["5.mh_adapter", "5.output_adapter"] {
        let maps: Vec<Vec<Vec<f32>>> =
            serde_json::from_value(case.fusion_attentions[key].clone()).unwrap();
        let mut sum = [0f32; 2];
        let mut count = 0.0;
        for (text, ids) in maps.iter().zip(&ids) {
            for (token, &id) in text.iter().zip(ids) {
                if id != 0 {
                    sum[0] += token[0];
                    sum[1] += token[1];
                    count += 1.0;
                }
            }
        }
        want.extend(sum.map(|s| s / count));
    }
    let svg = std::fs::read_to_string(dir.path().join("attention.svg")).unwrap();
    let cells: Vec<f32> = svg
        .split('>')
        .filter_map(|piece| piece.split('<').next())
        .map(str::trim)
        .filter(|t| t.len() == 5 && t.starts_with("0."))
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(cells.len(), 4, "{svg}");
    for (got, want) in cells.iter().zip(&want) {
        assert!(
            (got - want).abs() <= 1.5e-3,
            "cell {got} vs AdapterHub's mean {want}"
        );
    }
    assert!(svg.contains("dbl_a") && svg.contains("layer 5 FFN"));
    // PNG by extension.
    let png = dir.path().join("attention.png");
    let mut png_args = args.to_vec();
    let last = png_args.len() - 1;
    png_args[last] = arg(png.clone());
    let run = sinew(&png_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

/// Per-example routing: each example gets the hidden states and logits of its own adapter and
/// head (each checked against AdapterHub above), in input order, and under autodiff each
/// adapter's gradient comes from its own examples only.
#[test]
fn per_example_routing() {
    let (mut model, input) = loaded::<B>(&model_dir());
    let tasks = ["seq_b", "seq_a", "seq_b", "seq_a"];
    let routed = model.forward_routed(&input, &tasks).unwrap();
    let hidden = values(routed.encoded.last_hidden_state);
    let logits = values(routed.logits.expect("both heads have 3 labels"));
    let row = hidden.len() / 4;
    for name in ["seq_a", "seq_b"] {
        model.set_active(Some(name)).unwrap();
        let single = model.forward(&input).unwrap();
        let want = values(single.encoded.last_hidden_state);
        let want_logits = values(single.logits.unwrap());
        for i in (0..4).filter(|&i| tasks[i] == name) {
            let diff = max_abs_diff(
                &hidden[i * row..(i + 1) * row],
                &want[i * row..(i + 1) * row],
            );
            assert!(diff <= 1e-5, "{name} example {i}: {diff}");
            let diff = max_abs_diff(&logits[i * 3..i * 3 + 3], &want_logits[i * 3..i * 3 + 3]);
            assert!(diff <= 1e-5, "{name} example {i} logits: {diff}");
        }
    }
    let examples: Vec<(String, Vec<usize>)> = routed
        .heads
        .iter()
        .map(|h| (h.name.clone(), h.examples.clone()))
        .collect();
    assert_eq!(
        examples,
        [
            ("seq_b".to_string(), vec![0, 2]),
            ("seq_a".to_string(), vec![1, 3])
        ]
    );
    assert!(model.forward_routed(&input, &["seq_a"]).is_err());
}

/// Routing under autodiff: each adapter's gradient comes from its own examples only — the same
/// gradient as running that adapter alone on just those examples — and `train_fusion` with
/// `unfreeze_adapters` trains the fused adapters too.
#[test]
fn routed_training_and_unfrozen_adapters() {
    let dir = model_without_dropout();
    let (mut model, input) = loaded::<A>(dir.path());
    model.train_adapter("seq_a").unwrap();
    let tasks = ["seq_b", "seq_a", "seq_b", "seq_a"];
    let bias = |m: &AdapterModel<A>| {
        let Some(sinew::adapter::Adapter::Bottleneck(a)) = m.adapter("seq_a") else {
            panic!("seq_a is a bottleneck")
        };
        a.output[5]
            .as_ref()
            .unwrap()
            .adapter_up
            .bias
            .clone()
            .unwrap()
    };
    let routed = model.forward_routed(&input, &tasks).unwrap();
    // Rows 1 and 3 are seq_a's examples; the head reads the first token, which padding does not
    // reach, so a batch of just those two gives the same logits.
    let logits = routed.logits.unwrap();
    let rows = Tensor::cat(
        vec![logits.clone().narrow(0, 1, 1), logits.narrow(0, 3, 1)],
        0,
    );
    let grads = rows.sum().backward();
    let routed_grad = values(bias(&model).grad(&grads).expect("seq_a is trained"));
    let device = Default::default();
    let index = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![1i64, 3], [2]), &device);
    let own = EncoderInput {
        input_ids: input.input_ids.clone().select(0, index.clone()),
        token_type_ids: input.token_type_ids.clone().select(0, index.clone()),
        attention_mask: input.attention_mask.clone().select(0, index),
    };
    model.set_active(Some("seq_a")).unwrap();
    let grads = model
        .forward(&own)
        .unwrap()
        .logits
        .unwrap()
        .sum()
        .backward();
    let own_grad = values(bias(&model).grad(&grads).unwrap());
    let diff = max_abs_diff(&routed_grad, &own_grad);
    assert!(diff <= 1e-4, "routed gradient differs by {diff}");

    model.train_fusion("seq_a,seq_b", true).unwrap();
    let grads = model
        .forward(&input)
        .unwrap()
        .logits
        .unwrap()
        .sum()
        .backward();
    assert!(
        bias(&model).grad(&grads).is_some(),
        "unfrozen adapters are trained"
    );
    let q = &model.backbone().encoder.layer[0]
        .attention
        .self_attention
        .query;
    assert!(q.weight.grad(&grads).is_none(), "the backbone stays frozen");
}

/// `sinew encode` with several heads writes each head's logits and rows: `Parallel` (every text
/// through each adapter) and `BatchSplit` equal AdapterHub's head outputs; `--head DIR` attaches
/// a head saved alone by AdapterHub's `save_head` (its `.bin`) to an adapter folder without one.
#[test]
fn cli_encode_writes_each_heads_outputs() {
    let out = outputs();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, out.texts.join("\n")).unwrap();
    let output = dir.path().join("out.json");
    let fixtures = fixture_path("fusion");
    // seq_b without its head: the head comes from heads/seq_b.
    let headless = dir.path().join("seq_b");
    std::fs::create_dir(&headless).unwrap();
    for file in ["adapter_config.json", "adapter.safetensors"] {
        std::fs::copy(
            fixtures.join("adapters/seq_b").join(file),
            headless.join(file),
        )
        .unwrap();
    }
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let seq_a = path(&fixtures.join("adapters/seq_a"));
    let seq_b = path(&fixtures.join("adapters/seq_b"));
    let head_b = path(&fixtures.join("heads/seq_b"));
    let headless = path(&headless);
    for (case, adapters) in [
        ("parallel", vec!["--adapter", &seq_a, "--adapter", &seq_b]),
        (
            "batch_split",
            vec!["--adapter", &seq_a, "--adapter", &seq_b],
        ),
        (
            "parallel",
            vec![
                "--adapter",
                &seq_a,
                "--adapter",
                &headless,
                "--head",
                &head_b,
            ],
        ),
    ] {
        let want = &out.cases[case];
        let mut args = vec![
            "encode".to_string(),
            "--model".into(),
            path(&model_dir()),
            "--input".into(),
            path(&input),
            "--output".into(),
            path(&output),
            "--setup".into(),
            want.setup.clone(),
        ];
        args.extend(adapters.iter().map(|a| a.to_string()));
        let run = sinew(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            run.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let got: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
        let heads = got["heads"].as_object().expect("a heads map");
        assert_eq!(heads.len(), 2, "{case}: both heads");
        let rows: Vec<Vec<usize>> = match case {
            "parallel" => vec![(0..4).collect(), (0..4).collect()],
            _ => vec![vec![0], vec![1, 2, 3]],
        };
        for (i, name) in ["seq_a", "seq_b"].into_iter().enumerate() {
            let head = &heads[name];
            let got_rows: Vec<usize> = serde_json::from_value(head["rows"].clone()).unwrap();
            assert_eq!(got_rows, rows[i], "{case}: {name}'s rows");
            let diff = max_abs_diff(&flatten(&head["logits"]), &flatten(&want.logits[i]));
            assert!(diff <= 1e-4, "{case}: {name}'s logits differ by {diff}");
        }
    }
}
