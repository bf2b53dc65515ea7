//! PEFT LoRA folders (written by HuggingFace `peft`, random non-zero weights; fixtures from
//! tools/reference/make_peft_fixtures.py): loaded outputs match PEFT's, and sinew writes PEFT's layout.

mod common;

use common::{fixture_path, flat3, max_abs_diff, model_dir};
use serde::Deserialize;
use sinew::backbone::Pretrained;
use sinew::backend::NdArrayBackend;
use sinew::fusion::AdapterModel;

type B = NdArrayBackend;

#[derive(Deserialize)]
struct Outputs {
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    last_hidden_state: Vec<Vec<Vec<f32>>>,
}

#[test]
fn peft_lora_folder_loads_and_saves_back() {
    let device = Default::default();
    let dir = fixture_path("peft");
    let outputs: Outputs =
        serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap()).unwrap();
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let tokens = pretrained.tokenizer.encode(&outputs.texts).unwrap();
    assert_eq!(tokens.input_ids, outputs.input_ids);
    let input = tokens.to_input::<B>(&device);
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    let name = model.load_adapter(&dir.join("lora"), &device).unwrap();
    assert_eq!(name, "lora", "a PEFT adapter is named after its folder");
    model.set_active(Some(&name)).unwrap();
    let hidden = model.forward(&input).unwrap().encoded.last_hidden_state;
    let diff = max_abs_diff(
        &hidden.into_data().to_vec::<f32>().unwrap(),
        &flat3(&outputs.last_hidden_state),
    );
    eprintln!("peft lora: last_hidden_state max |diff| {diff:.2e}");
    assert!(diff <= 1e-4, "hidden states differ by {diff}");

    let out = tempfile::tempdir().unwrap();
    model.save_peft(out.path(), &name).unwrap();
    let read = |p: &std::path::Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    let (theirs, ours) = (read(&dir.join("lora")), read(out.path()));
    let (theirs, ours) = (
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
    );
    let (mut a, mut b) = (theirs.names(), ours.names());
    a.sort();
    b.sort();
    assert_eq!(a, b, "keys");
    for key in a {
        let (x, y) = (theirs.tensor(key).unwrap(), ours.tensor(key).unwrap());
        assert_eq!((x.shape(), x.data()), (y.shape(), y.data()), "{key}");
    }
    let config = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    let (theirs, ours) = (config(&dir.join("lora")), config(out.path()));
    for key in ["peft_type", "r", "layers_to_transform", "bias"] {
        assert_eq!(theirs[key], ours[key], "adapter_config.json: {key}");
    }
    // PEFT keeps target_modules as a set: compare without order.
    let targets = |v: &serde_json::Value| {
        let mut t: Vec<String> = serde_json::from_value(v["target_modules"].clone()).unwrap();
        t.sort();
        t
    };
    assert_eq!(
        targets(&theirs),
        targets(&ours),
        "adapter_config.json: target_modules"
    );
    assert_eq!(theirs["lora_alpha"].as_f64(), ours["lora_alpha"].as_f64());
}
