//! PEFT LoRA folders (`adapter_config.json` with `peft_type: "LORA"`, `adapter_model.safetensors`
//! with keys like `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`), mapped
//! onto sinew's [`LoraConfig`] and AdapterHub's key names, in both directions.

use serde_json::{Map, Value};
use sinew_backbone::BertConfig;

use crate::bottleneck::model_prefix;
use crate::lora::{CompositionMode, LoraConfig, LoraInit};
use crate::method::MethodSpec;

/// PEFT's module names for the projections sinew can adapt, and AdapterHub's `attn_matrices` letter.
const TARGETS: [(&str, Option<&str>); 4] = [
    ("query", Some("q")),
    ("key", Some("k")),
    ("value", Some("v")),
    ("intermediate.dense", None),
];

/// A test that a setting is at a value sinew supports.
type Supported = &'static dyn Fn(&Value) -> bool;

/// PEFT settings that must stay at their defaults, with the reason sinew gives.
fn must_be_default(raw: &Map<String, Value>) -> Result<(), String> {
    let is =
        |key: &str, ok: &dyn Fn(&Value) -> bool| raw.get(key).is_none_or(|v| v.is_null() || ok(v));
    let checks: [(&str, Supported); 7] = [
        ("bias", &|v| v == "none"),
        ("use_dora", &|v| v == false),
        ("use_rslora", &|v| v == false),
        ("fan_in_fan_out", &|v| v == false),
        ("modules_to_save", &|v| {
            v.as_array().is_some_and(Vec::is_empty)
        }),
        ("rank_pattern", &|v| {
            v.as_object().is_some_and(Map::is_empty)
        }),
        ("alpha_pattern", &|v| {
            v.as_object().is_some_and(Map::is_empty)
        }),
    ];
    for (key, ok) in checks {
        if !is(key, ok) {
            return Err(format!("`{key}` = {} is not supported", raw[key]));
        }
    }
    Ok(())
}

/// Whether a parsed `adapter_config.json` is PEFT's.
pub fn is_peft(json: &Map<String, Value>) -> bool {
    json.contains_key("peft_type")
}

/// PEFT's LoRA config as sinew's; the error names the key.
pub fn config_from_peft(
    raw: &Map<String, Value>,
    num_layers: Option<usize>,
) -> Result<LoraConfig, String> {
    match raw.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(format!(
                "`peft_type` {other:?} is not supported (only \"LORA\")"
            ))
        }
    }
    must_be_default(raw)?;
    let number = |key: &str| {
        raw.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("missing number `{key}`"))
    };
    let r = number("r")? as usize;
    let alpha = number("lora_alpha")?;
    let dropout = raw
        .get("lora_dropout")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let targets: Vec<String> = match raw.get("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or("`target_modules` must list names")
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "`target_modules` must be a list of module names, not {other:?}"
            ))
        }
    };
    let mut config = LoraConfig {
        r,
        alpha,
        dropout,
        attn_matrices: vec![],
        composition_mode: CompositionMode::Add,
        init_weights: LoraInit::Lora,
        use_gating: false,
        selfattn_lora: false,
        intermediate_lora: false,
        output_lora: false,
        leave_out: vec![],
    };
    for target in &targets {
        match TARGETS.iter().find(|(name, _)| name == target) {
            Some((_, Some(letter))) => {
                config.selfattn_lora = true;
                config.attn_matrices.push((*letter).to_string());
            }
            Some((_, None)) => config.intermediate_lora = true,
            None => return Err(format!("`target_modules` entry \"{target}\" is not supported (query, key, value, intermediate.dense)")),
        }
    }
    if let Some(layers) = raw.get("layers_to_transform").filter(|v| !v.is_null()) {
        let keep: Vec<usize> = serde_json::from_value(layers.clone())
            .map_err(|_| "`layers_to_transform` must be a list of layer indices".to_string())?;
        let n = num_layers.unwrap_or_else(|| keep.iter().max().map_or(0, |m| m + 1));
        config.leave_out = (0..n).filter(|l| !keep.contains(l)).collect();
    }
    config.validate(None)?;
    Ok(config)
}

/// sinew's LoRA config as PEFT's `adapter_config.json`.
pub fn config_to_peft(config: &LoraConfig, model: &BertConfig) -> Result<Value, String> {
    if config.composition_mode != CompositionMode::Add || config.use_gating || config.output_lora {
        return Err(
            "PEFT folders hold plain LoRA on query/key/value/intermediate.dense only".into(),
        );
    }
    let mut targets: Vec<&str> = TARGETS
        .iter()
        .filter(|(_, letter)| {
            letter.is_some_and(|l| {
                config.selfattn_lora && config.attn_matrices.iter().any(|m| m == l)
            })
        })
        .map(|(name, _)| *name)
        .collect();
    if config.intermediate_lora {
        targets.push("intermediate.dense");
    }
    let layers: Vec<usize> = (0..model.num_hidden_layers)
        .filter(|l| !config.leave_out.contains(l))
        .collect();
    Ok(serde_json::json!({
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "layers_to_transform": if config.leave_out.is_empty() { Value::Null } else { layers.into() },
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "task_type": null,
        "inference_mode": true,
        "base_model_name_or_path": model.model_type,
    }))
}

/// PEFT key → AdapterHub key for adapter `name`: `base_model.model.[bert.]encoder.layer.L.P.lora_A.weight`
/// → `bert.encoder.layer.L.P.loras.NAME.lora_A`.
pub fn key_from_peft(key: &str, model: &BertConfig, name: &str) -> Option<String> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest
        .strip_prefix(&format!("{}.", model_prefix(model)))
        .unwrap_or(rest);
    let rest = rest.strip_suffix(".weight")?;
    let (module, matrix) = rest.rsplit_once('.')?;
    Some(format!(
        "{}.{module}.loras.{name}.{matrix}",
        model_prefix(model)
    ))
}

/// AdapterHub key → PEFT key (the inverse of [`key_from_peft`], for a bare encoder).
pub fn key_to_peft(key: &str, model: &BertConfig, name: &str) -> Option<String> {
    let rest = key.strip_prefix(&format!("{}.", model_prefix(model)))?;
    let (module, matrix) = rest.split_once(&format!(".loras.{name}."))?;
    Some(format!("base_model.model.{module}.{matrix}.weight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> BertConfig {
        BertConfig::from_json(
            r#"{"vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,
            "intermediate_size":1536,"max_position_embeddings":512}"#,
        )
        .unwrap()
    }

    #[test]
    fn keys_map_both_ways() {
        let m = minilm();
        for peft in [
            "base_model.model.encoder.layer.3.attention.self.query.lora_A.weight",
            "base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight",
        ] {
            let ours = key_from_peft(peft, &m, "x").unwrap();
            assert_eq!(
                ours,
                "bert.encoder.layer.3.attention.self.query.loras.x.lora_A"
            );
        }
        let ours = "bert.encoder.layer.0.intermediate.dense.loras.x.lora_B";
        assert_eq!(
            key_to_peft(ours, &m, "x").unwrap(),
            "base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight"
        );
    }

    #[test]
    fn unsupported_settings_are_named() {
        let base = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"]});
        let with = |key: &str, value: Value| {
            let mut json = base.as_object().unwrap().clone();
            json.insert(key.into(), value);
            config_from_peft(&json, Some(6)).unwrap_err()
        };
        assert!(with("use_rslora", true.into()).contains("`use_rslora`"));
        assert!(with("bias", "all".into()).contains("`bias`"));
        assert!(with("target_modules", serde_json::json!(["output.dense"]))
            .contains("\"output.dense\""));
        let ok = config_from_peft(base.as_object().unwrap(), Some(6)).unwrap();
        assert_eq!(
            (ok.r, ok.alpha, ok.attn_matrices.clone()),
            (4, 8.0, vec!["q".to_string()])
        );
    }
}
