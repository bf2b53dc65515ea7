//! The real all-MiniLM-L6-v2 against HuggingFace `transformers` (golden fixtures from
//! tools/reference/make_backbone_fixtures.py): token ids exactly, outputs to 1e-4, per backend.

mod common;

use common::{backbone_cases, flat2, flat3, max_abs_diff, model_dir};
use sinew::backbone::Pretrained;
use sinew_backbone::FusedOps;

const TOLERANCE: f32 = 1e-4;

fn parity<B: FusedOps>() {
    let device = B::Device::default();
    let dir = model_dir();
    for case in backbone_cases() {
        let model = Pretrained::<B>::load(&dir, Some(case.max_len), &device).unwrap();
        let tokens = model.tokenizer.encode(&case.texts).unwrap();
        assert_eq!(tokens.input_ids, case.input_ids, "{}: input_ids", case.name);
        assert_eq!(
            tokens.token_type_ids, case.token_type_ids,
            "{}: token_type_ids",
            case.name
        );
        assert_eq!(
            tokens.attention_mask, case.attention_mask,
            "{}: attention_mask",
            case.name
        );

        let out = model.model.forward(&tokens.to_input::<B>(&device));
        let hidden = out
            .last_hidden_state
            .clone()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let pooled = out.mean_pooled().into_data().to_vec::<f32>().unwrap();
        let pooler = out.pooler_output.expect("MiniLM has a pooler");
        let pooler = pooler.into_data().to_vec::<f32>().unwrap();
        for (what, got, want) in [
            ("last_hidden_state", hidden, flat3(&case.last_hidden_state)),
            ("mean_pooled", pooled, flat2(&case.mean_pooled)),
            ("pooler_output", pooler, flat2(&case.pooler_output)),
        ] {
            let diff = max_abs_diff(&got, &want);
            eprintln!("{}: {what} max |diff| {diff:.2e}", case.name);
            assert!(diff <= TOLERANCE, "{}: {what} differs by {diff}", case.name);
        }
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn minilm_matches_transformers_on_ndarray() {
    parity::<sinew::backend::NdArrayBackend>();
}

#[cfg(feature = "flex")]
#[test]
fn minilm_matches_transformers_on_flex() {
    parity::<sinew::backend::FlexBackend>();
}

#[cfg(feature = "wgpu")]
#[test]
fn minilm_matches_transformers_on_wgpu() {
    parity::<sinew::backend::WgpuBackend>();
}
