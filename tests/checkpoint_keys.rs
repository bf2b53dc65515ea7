//! Checkpoints saved from task models (`BertForSequenceClassification`: keys under `bert.`, a
//! classifier, sometimes no pooler) load as the bare encoder and still match `transformers`.

mod common;

use std::collections::HashMap;

use common::{backbone_cases, flat3, max_abs_diff, model_dir};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use sinew::backbone::Pretrained;
use sinew::backend::NdArrayBackend;

#[test]
fn task_model_checkpoint_loads_as_encoder() {
    let real = model_dir();
    let bytes = std::fs::read(real.join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let classifier = vec![0u8; 2 * 384 * 4];
    let mut renamed: HashMap<String, TensorView> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("pooler."))
        .map(|(name, view)| (format!("bert.{name}"), view))
        .collect();
    renamed.insert(
        "classifier.weight".into(),
        TensorView::new(safetensors::Dtype::F32, vec![2, 384], &classifier).unwrap(),
    );

    let dir = tempfile::tempdir().unwrap();
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::os::unix::fs::symlink(real.join(name), dir.path().join(name)).unwrap();
    }

    let device = Default::default();
    let case = &backbone_cases()[0];
    let model =
        Pretrained::<NdArrayBackend>::load(dir.path(), Some(case.max_len), &device).unwrap();
    assert!(
        model.model.pooler.is_none(),
        "no pooler in the checkpoint, none in the model"
    );
    let tokens = model.tokenizer.encode(&case.texts).unwrap();
    let out = model
        .model
        .forward(&tokens.to_input::<NdArrayBackend>(&device));
    let hidden = out.last_hidden_state.into_data().to_vec::<f32>().unwrap();
    let diff = max_abs_diff(&hidden, &flat3(&case.last_hidden_state));
    assert!(diff <= 1e-4, "last_hidden_state differs by {diff}");
}
