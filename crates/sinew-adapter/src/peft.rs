//! PEFT LoRA folders (`adapter_config.json` with `peft_type: "LORA"`, `adapter_model.safetensors`
//! with keys like `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`), mapped
//! onto sinew's [`LoraConfig`] and AdapterHub's key names, in both directions.
//!
//! PEFT's target rules are resolved as `check_target_module_exists` does, against a `BertModel`'s
//! module names (`encoder.layer.L.attention.self.query`, …, `pooler.dense`): `target_modules` as a
//! list (an entry equal to the name, or ending it after a `.`), a regex (full match) or
//! `"all-linear"`; `exclude_modules` (list or regex); `layers_to_transform` with `layers_pattern`;
//! `rank_pattern`/`alpha_pattern` (`get_pattern_key`); `use_rslora`; `bias: "lora_only"` (the
//! adapted projections' own biases, `…base_layer.bias`); `modules_to_save` holding the classifier
//! of a sequence-classification model (a one-layer head on the pooler, as
//! `BertForSequenceClassification` has). Settings that change the forward pass in ways sinew does
//! not implement (DoRA, `fan_in_fan_out`, `bias: "all"`, other modules to save, …) are refused
//! naming the key; a match on `pooler.dense` names the module.

use serde_json::{Map, Value};
use sinew_backbone::{BertConfig, Projection};

use crate::bottleneck::model_prefix;
use crate::error::ConfigError;
use crate::lora::{site_path, CompositionMode, LoraConfig, LoraInit, PeftPlacement, PeftSite};
use crate::method::MethodSpec;

/// The projections of an encoder layer sinew can adapt, by their module path inside the layer.
const MODULES: [(&str, Projection); 6] = [
    ("attention.self.query", Projection::Query),
    ("attention.self.key", Projection::Key),
    ("attention.self.value", Projection::Value),
    ("attention.output.dense", Projection::AttentionOutput),
    ("intermediate.dense", Projection::Intermediate),
    ("output.dense", Projection::Output),
];

/// Linear modules of a BERT outside the encoder layers, which sinew cannot adapt.
const OTHER_LINEARS: [&str; 1] = ["pooler.dense"];

/// A test that a setting is at a value sinew supports.
type Supported = &'static dyn Fn(&Value) -> bool;

/// PEFT settings that must stay at their defaults (null counts as default), with the reason sinew
/// gives. Init-only settings (`init_lora_weights`, `loftq_config`, `eva_config`, …) are ignored.
fn must_be_default(raw: &Map<String, Value>) -> Result<(), ConfigError> {
    let is =
        |key: &str, ok: &dyn Fn(&Value) -> bool| raw.get(key).is_none_or(|v| v.is_null() || ok(v));

    if raw.get("bias").is_some_and(|v| v == "all") {
        return Err(ConfigError::invalid(
            "bias",
            "= \"all\" is not supported: it retrains every bias of the backbone, \
             which sinew shares between adapters (\"none\" and \"lora_only\" are)",
        ));
    }
    let saved = match names(raw, "modules_to_save")? {
        Names::None => vec![],
        Names::One(one) => vec![one],
        Names::List(list) => list,
    };
    if let Some(other) = saved.iter().find(|m| !SAVED_MODULES.contains(&m.as_str())) {
        return Err(ConfigError::invalid(
            "modules_to_save",
            format!(
                "entry \"{other}\" is not supported (sinew reads the classifier of \
                 a sequence-classification model)"
            ),
        ));
    }
    let checks: [(&str, Supported); 14] = [
        ("bias", &|v| v == "none" || v == "lora_only"),
        ("use_dora", &|v| v == false),
        ("fan_in_fan_out", &|v| v == false),
        ("lora_bias", &|v| v == false),
        ("use_qalora", &|v| v == false),
        ("use_bdlora", &|v| v == false),
        ("target_parameters", &|v| {
            v.as_array().is_some_and(Vec::is_empty)
        }),
        ("layer_replication", &|v| {
            v.as_array().is_some_and(Vec::is_empty)
        }),
        ("trainable_token_indices", &|v| {
            v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(Map::is_empty)
        }),
        ("alora_invocation_tokens", &|v| {
            v.as_array().is_some_and(Vec::is_empty)
        }),
        ("arrow_config", &|v| {
            v.as_object().is_some_and(Map::is_empty)
        }),
        ("kasa_config", &|v| v.as_object().is_some_and(Map::is_empty)),
        ("monteclora_config", &|v| {
            v.as_object().is_some_and(Map::is_empty)
        }),
        ("velora_config", &|v| {
            v.as_object().is_some_and(Map::is_empty)
        }),
    ];
    for (key, ok) in checks {
        if !is(key, ok) {
            return Err(ConfigError::unsupported(key, &raw[key]));
        }
    }
    Ok(())
}

/// Whether a parsed `adapter_config.json` is PEFT's.
pub(crate) fn is_peft(json: &Map<String, Value>) -> bool {
    json.contains_key("peft_type")
}

/// A list of strings, or one string, or null.
enum Names {
    None,
    One(String),
    List(Vec<String>),
}

impl Names {
    fn contains(&self, name: &str) -> bool {
        match self {
            Names::None => false,
            Names::One(one) => one == name,
            Names::List(list) => list.iter().any(|n| n == name),
        }
    }
}

/// `modules_to_save` entries sinew reads: the classifier of `BertForSequenceClassification`
/// (PEFT's `SEQ_CLS` default also lists `score`, which a BERT does not have).
const SAVED_MODULES: [&str; 2] = ["classifier", "score"];

/// PEFT's task types whose model wraps the encoder (`BertFor…`): their keys carry the model prefix
/// (`base_model.model.bert.encoder…`).
const WRAPPING_TASKS: [&str; 3] = ["SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"];

/// Whether a PEFT config's keys carry the model prefix.
pub(crate) fn wraps_encoder(json: &Value) -> bool {
    json.get("task_type")
        .and_then(Value::as_str)
        .is_some_and(|t| WRAPPING_TASKS.contains(&t))
}

/// Whether a PEFT config saves the classifier (`modules_to_save` lists `classifier`).
pub(crate) fn saves_classifier(raw: &Map<String, Value>) -> bool {
    names(raw, "modules_to_save").is_ok_and(|n| n.contains("classifier"))
}

/// The classifier's weight and bias keys in `adapter_model.safetensors`.
pub(crate) const CLASSIFIER_KEYS: [&str; 2] = [
    "base_model.model.classifier.weight",
    "base_model.model.classifier.bias",
];

fn names(raw: &Map<String, Value>, key: &str) -> Result<Names, ConfigError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(Names::None),
        Some(Value::String(s)) => Ok(Names::One(s.clone())),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .map(Names::List)
            .ok_or_else(|| ConfigError::invalid(key, "must be a string or a list of strings")),
        Some(other) => Err(ConfigError::invalid(
            key,
            format!("must be a string or a list of strings, not {other}"),
        )),
    }
}

/// PEFT's `get_pattern_key`: the first key `k` of a `rank_pattern`/`alpha_pattern` for which
/// `(.*\.)?(k)` matches all of `module`.
fn pattern_value(
    raw: &Map<String, Value>,
    key: &str,
    module: &str,
) -> Result<Option<f64>, ConfigError> {
    let Some(Value::Object(pattern)) = raw.get(key) else {
        return Ok(None);
    };
    for (k, v) in pattern {
        if regex::full_match(&format!(r"(.*\.)?({k})"), module)
            .map_err(|e| ConfigError::invalid(key, format!("key \"{k}\": {e}")))?
        {
            return v.as_f64().map(Some).ok_or_else(|| {
                ConfigError::invalid(key, format!("value for \"{k}\" must be a number"))
            });
        }
    }
    Ok(None)
}

/// PEFT's layer index of `module` (`check_target_module_exists`): the first numbered segment,
/// after a segment matching `layers_pattern` when given.
fn layer_index(module: &str, patterns: &Names) -> Result<Option<usize>, ConfigError> {
    let segments: Vec<&str> = module.split('.').collect();
    let patterns: Vec<&str> = match patterns {
        Names::None => vec![],
        Names::One(p) => vec![p.as_str()],
        Names::List(ps) => ps.iter().map(String::as_str).collect(),
    };
    let numeric = |j: usize| {
        j + 1 < segments.len()
            && !segments[j].is_empty()
            && segments[j].bytes().all(|b| b.is_ascii_digit())
    };
    if patterns.is_empty() || patterns.iter().all(|p| p.is_empty()) {
        // `.*?\.[^.]*\.(\d+)\.`
        return Ok((2..segments.len())
            .find(|&j| numeric(j))
            .and_then(|j| segments[j].parse().ok()));
    }
    for pattern in patterns {
        for j in (1..segments.len()).filter(|&j| numeric(j)) {
            let before = segments[..j].join(".");
            if regex::full_match(&format!(r"(.*\.)?(?:{pattern})"), &before).map_err(|e| {
                ConfigError::invalid("layers_pattern", format!("\"{pattern}\": {e}"))
            })? {
                return Ok(segments[j].parse().ok());
            }
        }
    }
    Ok(None)
}

/// PEFT's `check_target_module_exists` for module `key` (its name inside a `BertModel`).
fn targeted(raw: &Map<String, Value>, key: &str) -> Result<bool, ConfigError> {
    let ends = |list: &[String]| {
        list.iter()
            .any(|e| key == e || key.ends_with(&format!(".{e}")))
    };
    match names(raw, "exclude_modules")? {
        Names::One(re)
            if regex::full_match(&re, key)
                .map_err(|e| ConfigError::invalid("exclude_modules", e))? =>
        {
            return Ok(false)
        }
        Names::List(list) if ends(&list) => return Ok(false),
        _ => {}
    }
    match names(raw, "target_modules")? {
        Names::One(all) if all.eq_ignore_ascii_case("all-linear") => Ok(true),
        Names::One(re) => {
            regex::full_match(&re, key).map_err(|e| ConfigError::invalid("target_modules", e))
        }
        // PEFT's default for BERT-family models.
        Names::None => targeted_list(raw, key, &["query".into(), "value".into()]),
        Names::List(list) => targeted_list(raw, key, &list),
    }
}

fn targeted_list(
    raw: &Map<String, Value>,
    key: &str,
    list: &[String],
) -> Result<bool, ConfigError> {
    if list.iter().any(|e| e == key) {
        return Ok(true);
    }
    if !list.iter().any(|e| key.ends_with(&format!(".{e}"))) {
        return Ok(false);
    }
    let keep: Vec<usize> = match raw.get("layers_to_transform") {
        None | Some(Value::Null) => return Ok(true),
        Some(Value::Array(a)) if a.is_empty() => return Ok(true),
        Some(v) => match v.as_u64() {
            Some(one) => vec![one as usize],
            None => serde_json::from_value(v.clone()).map_err(|_| {
                ConfigError::invalid(
                    "layers_to_transform",
                    "must be a layer index or a list of them",
                )
            })?,
        },
    };
    Ok(layer_index(key, &names(raw, "layers_pattern")?)?.is_some_and(|l| keep.contains(&l)))
}

/// PEFT's LoRA config as sinew's; the error names the key. `num_layers` is the backbone's depth
/// (PEFT's rules are resolved against its module names).
pub(crate) fn config_from_peft(
    raw: &Map<String, Value>,
    num_layers: Option<usize>,
) -> Result<LoraConfig, ConfigError> {
    match raw.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(ConfigError::invalid(
                "peft_type",
                format!("{other:?} is not supported (only \"LORA\")"),
            ))
        }
    }
    must_be_default(raw)?;
    let number = |key: &str| {
        raw.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| ConfigError::Missing { key: key.into() })
    };
    let r = number("r")? as usize;
    let alpha = number("lora_alpha")?;
    let dropout = raw
        .get("lora_dropout")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let rslora = match raw.get("use_rslora") {
        None | Some(Value::Null) => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ConfigError::invalid("use_rslora", "must be true or false"))?,
    };
    let highest = match raw.get("layers_to_transform") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).max(),
        Some(v) => v.as_u64(),
        None => None,
    };
    let n = num_layers.unwrap_or_else(|| highest.map_or(12, |h| (h as usize + 1).max(12)));
    for other in OTHER_LINEARS {
        if targeted(raw, other)? {
            return Err(ConfigError::invalid(
                "target_modules",
                format!(
                    "matches `{other}`, which sinew cannot adapt (list it in `exclude_modules`)"
                ),
            ));
        }
    }
    let mut sites = Vec::new();
    for layer in 0..n {
        for (path, site) in MODULES {
            let module = format!("encoder.layer.{layer}.{path}");
            if !targeted(raw, &module)? {
                continue;
            }
            let r = pattern_value(raw, "rank_pattern", &module)?.map_or(r, |v| v as usize);
            let alpha = pattern_value(raw, "alpha_pattern", &module)?.unwrap_or(alpha);
            if r == 0 {
                return Err(ConfigError::invalid(
                    "rank_pattern",
                    format!("gives `{module}` rank 0"),
                ));
            }
            let scaling = if rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            sites.push(PeftSite {
                layer,
                site,
                r,
                scaling,
            });
        }
    }
    if sites.is_empty() {
        return Err(ConfigError::invalid(
            "target_modules",
            format!(
                "= {} matches no module sinew can adapt",
                raw.get("target_modules").unwrap_or(&Value::Null)
            ),
        ));
    }
    let mut config = switches(&sites, r, alpha, dropout, n);
    let plain = alpha / r as f64;
    let expressible = sites.iter().all(|s| s.r == r && s.scaling == plain)
        && (0..n).all(|l| {
            MODULES.iter().all(|&(_, site)| {
                config.placed_at(l, site) == sites.iter().any(|s| s.layer == l && s.site == site)
            })
        });
    config.peft = Some(PeftPlacement {
        sites: if expressible { vec![] } else { sites },
        raw: raw.clone(),
    });
    config.validate(None)?;
    Ok(config)
}

/// AdapterHub's switches for `sites` (exact when every layer has the same set of sites without
/// the attention output, and one rank and alpha).
fn switches(sites: &[PeftSite], r: usize, alpha: f64, dropout: f64, n: usize) -> LoraConfig {
    let has = |p: Projection| sites.iter().any(|s| s.site == p);
    let attn_matrices: Vec<String> = [
        (Projection::Query, "q"),
        (Projection::Key, "k"),
        (Projection::Value, "v"),
    ]
    .into_iter()
    .filter(|&(p, _)| has(p))
    .map(|(_, m)| m.to_string())
    .collect();
    LoraConfig {
        r,
        alpha,
        dropout,
        selfattn_lora: !attn_matrices.is_empty(),
        attn_matrices,
        composition_mode: CompositionMode::Add,
        init_weights: LoraInit::Lora,
        use_gating: false,
        intermediate_lora: has(Projection::Intermediate),
        output_lora: has(Projection::Output),
        leave_out: (0..n)
            .filter(|&l| !sites.iter().any(|s| s.layer == l))
            .collect(),
        peft: None,
    }
}

/// sinew's LoRA config as PEFT's `adapter_config.json`: a PEFT folder's own, when its rules
/// still give this placement, else one built from the switches; with `bias: "lora_only"` when the
/// adapter has `own_biases`, and the classifier as a module to save (task `SEQ_CLS`) with
/// `classifier`.
pub(crate) fn config_to_peft(
    config: &LoraConfig,
    model: &BertConfig,
    own_biases: bool,
    classifier: bool,
) -> Result<Value, ConfigError> {
    let mut json = placement_to_peft(config, model)?;
    let map = json.as_object_mut().expect("configs are objects");
    if own_biases {
        map.insert("bias".into(), "lora_only".into());
    }
    if classifier && !saves_classifier(map) {
        map.insert("modules_to_save".into(), serde_json::json!(["classifier"]));
        map.insert("task_type".into(), "SEQ_CLS".into());
    }
    Ok(json)
}

fn placement_to_peft(config: &LoraConfig, model: &BertConfig) -> Result<Value, ConfigError> {
    if config.composition_mode != CompositionMode::Add || config.use_gating {
        let problem = "is not a plain LoRA: PEFT folders hold plain LoRA only (no IA3, no gate)";
        return Err(ConfigError::invalid("composition_mode", problem));
    }
    let n = model.num_hidden_layers;
    if let Some(placement) = &config.peft {
        let same = config_from_peft(&placement.raw, Some(n)).is_ok_and(|read| {
            read.r == config.r
                && read.alpha == config.alpha
                && (0..n).all(|l| {
                    MODULES.iter().all(|&(_, s)| {
                        read.placed_at(l, s) == config.placed_at(l, s)
                            && read.rank_and_scaling(l, s) == config.rank_and_scaling(l, s)
                    })
                })
        });
        if same {
            return Ok(Value::Object(placement.raw.clone()));
        }
    }
    if let Some(sites) = config.peft_sites() {
        return Ok(config_for_sites(config, sites, model));
    }
    let layers: Vec<usize> = (0..n).filter(|l| !config.leave_out.contains(l)).collect();
    let mut targets: Vec<String> = [("q", "query"), ("k", "key"), ("v", "value")]
        .into_iter()
        .filter(|(m, _)| config.selfattn_lora && config.attn_matrices.iter().any(|x| x == m))
        .map(|(_, name)| name.to_string())
        .collect();
    if config.intermediate_lora {
        targets.push("intermediate.dense".into());
    }
    if config.output_lora {
        // PEFT's suffix rule would take `output.dense` for the attention output too: name each.
        targets.extend(
            layers
                .iter()
                .map(|l| format!("encoder.layer.{l}.output.dense")),
        );
    }
    let layers = if config.leave_out.is_empty() {
        Value::Null
    } else {
        layers.into()
    };
    Ok(peft_json(
        config,
        model,
        targets,
        layers,
        Map::new(),
        Map::new(),
    ))
}

/// A PEFT config naming every adapted module in full, with `rank_pattern`/`alpha_pattern` where a
/// module's rank or alpha differs from `r`/`lora_alpha` (rsLoRA scalings become plain alphas).
fn config_for_sites(config: &LoraConfig, sites: &[PeftSite], model: &BertConfig) -> Value {
    let (mut targets, mut ranks, mut alphas) = (vec![], Map::new(), Map::new());
    for s in sites {
        let name = format!("encoder.layer.{}.{}", s.layer, site_path(s.site));
        if s.r != config.r {
            ranks.insert(name.clone(), s.r.into());
        }
        let alpha = s.scaling * s.r as f64;
        if alpha != config.alpha {
            alphas.insert(name.clone(), alpha.into());
        }
        targets.push(name);
    }
    peft_json(config, model, targets, Value::Null, ranks, alphas)
}

/// The `adapter_config.json` sinew writes when it has no PEFT config to keep.
fn peft_json(
    config: &LoraConfig,
    model: &BertConfig,
    targets: Vec<String>,
    layers: Value,
    ranks: Map<String, Value>,
    alphas: Map<String, Value>,
) -> Value {
    serde_json::json!({
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "layers_to_transform": layers,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "task_type": null,
        "inference_mode": true,
        "base_model_name_or_path": model.model_type,
    })
}

/// Python's `re.fullmatch` for PEFT's patterns, with the `regex` crate (its syntax covers what
/// PEFT configs use: classes, groups, `(?:…)`, `(?P<n>…)`, alternation, repetition).
mod regex {
    /// Whether `pattern` matches all of `text`.
    pub(crate) fn full_match(pattern: &str, text: &str) -> Result<bool, String> {
        ::regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(|re| re.is_match(text))
            .map_err(|e| format!("/{pattern}/ is not a regular expression ({})", one_line(&e)))
    }

    fn one_line(e: &::regex::Error) -> String {
        e.to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::full_match;

        #[test]
        fn python_full_match() {
            let m = |p: &str, t: &str| full_match(p, t).unwrap();
            assert!(m(
                r".*\.(query|value)",
                "encoder.layer.0.attention.self.query"
            ));
            assert!(!m(
                r".*\.(query|value)",
                "encoder.layer.0.attention.self.key"
            ));
            assert!(m(r"(.*\.)?(value)", "value"));
            assert!(!m(r"(.*\.)?(value)", "xvalue"));
            assert!(m(
                r".*?layer\.\d+\.(?:output)\.dense",
                "encoder.layer.11.output.dense"
            ));
            assert!(m(r"query|value", "value") && !m(r"query|value", "values"));
            let err = full_match(r"(query", "query").unwrap_err();
            assert!(err.contains("(query") && !err.contains('\n'), "{err}");
        }
    }
}

/// PEFT key → AdapterHub key for adapter `name`: `base_model.model.[bert.]encoder.layer.L.P.lora_A.weight`
/// → `bert.encoder.layer.L.P.loras.NAME.lora_A` (and `…P.base_layer.bias` → `…P.loras.NAME.bias`).
pub(crate) fn key_from_peft(key: &str, model: &BertConfig, name: &str) -> Option<String> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest
        .strip_prefix(&format!("{}.", model_prefix(model)))
        .unwrap_or(rest);
    if let Some(module) = rest.strip_suffix(".base_layer.bias") {
        return Some(format!(
            "{}.{module}.loras.{name}.bias",
            model_prefix(model)
        ));
    }
    let rest = rest.strip_suffix(".weight")?;
    let (module, matrix) = rest.rsplit_once('.')?;
    Some(format!(
        "{}.{module}.loras.{name}.{matrix}",
        model_prefix(model)
    ))
}

/// AdapterHub key → PEFT key (the inverse of [`key_from_peft`]); `wrapped` keeps the model prefix
/// (a config whose task wraps the encoder, see [`wraps_encoder`]).
pub(crate) fn key_to_peft(
    key: &str,
    model: &BertConfig,
    name: &str,
    wrapped: bool,
) -> Option<String> {
    let root = model_prefix(model);
    let rest = key.strip_prefix(&format!("{root}."))?;
    let (module, matrix) = rest.split_once(&format!(".loras.{name}."))?;
    let module = if wrapped {
        format!("{root}.{module}")
    } else {
        module.to_string()
    };
    Some(match matrix {
        "bias" => format!("base_model.model.{module}.base_layer.bias"),
        _ => format!("base_model.model.{module}.{matrix}.weight"),
    })
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
            key_to_peft(ours, &m, "x", false).unwrap(),
            "base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight"
        );
        assert_eq!(
            key_to_peft(ours, &m, "x", true).unwrap(),
            "base_model.model.bert.encoder.layer.0.intermediate.dense.lora_B.weight"
        );
        // bias "lora_only": the projection's own bias.
        let peft = "base_model.model.encoder.layer.2.attention.self.value.base_layer.bias";
        let ours = "bert.encoder.layer.2.attention.self.value.loras.x.bias";
        assert_eq!(key_from_peft(peft, &m, "x").unwrap(), ours);
        assert_eq!(key_to_peft(ours, &m, "x", false).unwrap(), peft);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let base = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query"]});
        let with = |key: &str, value: Value| {
            let mut json = base.as_object().unwrap().clone();
            json.insert(key.into(), value);
            config_from_peft(&json, Some(6)).unwrap_err()
        };
        for (key, value) in [
            ("use_dora", Value::from(true)),
            ("fan_in_fan_out", true.into()),
            ("bias", "all".into()),
            ("bias", "weird".into()),
            (
                "modules_to_save",
                serde_json::json!(["classifier", "pooler"]),
            ),
            ("modules_to_save", "embeddings".into()),
            ("lora_bias", true.into()),
        ] {
            let e = with(key, value);
            assert_eq!(e.key(), Some(key), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        // What sinew reads: the adapted projections' biases, the classifier.
        for (key, value) in [
            ("bias", Value::from("lora_only")),
            (
                "modules_to_save",
                serde_json::json!(["classifier", "score"]),
            ),
        ] {
            let mut json = base.as_object().unwrap().clone();
            json.insert(key.into(), value);
            config_from_peft(&json, Some(6)).unwrap();
        }
        let e = with("target_modules", serde_json::json!(["pooler.dense"])).to_string();
        assert!(
            e.contains("`pooler.dense`") && e.contains("`target_modules`"),
            "{e}"
        );
        let e = with("target_modules", "all-linear".into()).to_string();
        assert!(e.contains("`pooler.dense`"), "{e}");
        let e = with("target_modules", serde_json::json!(["word_embeddings"])).to_string();
        assert!(e.contains("matches no module"), "{e}");
        let ok = config_from_peft(base.as_object().unwrap(), Some(6)).unwrap();
        assert_eq!(
            (ok.r, ok.alpha, ok.attn_matrices.clone()),
            (4, 8.0, vec!["q".to_string()])
        );
        assert!(ok.peft_sites().is_none(), "expressible with the switches");
    }

    fn resolve(json: Value) -> LoraConfig {
        config_from_peft(json.as_object().unwrap(), Some(6)).unwrap()
    }

    fn placed(config: &LoraConfig) -> Vec<(usize, Projection)> {
        (0..6)
            .flat_map(|l| MODULES.iter().map(move |&(_, s)| (l, s)))
            .filter(|&(l, s)| config.placed_at(l, s))
            .collect()
    }

    #[test]
    fn target_rules_follow_peft() {
        use Projection::*;
        // Suffix rule: "dense" is the attention output, intermediate and output projections.
        let c = resolve(
            serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": ["query", "dense", "value"], "exclude_modules": ["pooler.dense"]}),
        );
        assert_eq!(placed(&c).len(), 30);
        assert!(c.placed_at(3, AttentionOutput) && c.placed_at(3, Output) && !c.placed_at(3, Key));
        // "output.dense" also ends the attention output's name.
        let c = resolve(
            serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": ["output.dense"], "layers_to_transform": 4, "layers_pattern": ["layer"]}),
        );
        assert_eq!(placed(&c), vec![(4, AttentionOutput), (4, Output)]);
        let c = resolve(
            serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": "all-linear", "exclude_modules": ".*pooler.*"}),
        );
        assert_eq!(placed(&c).len(), 36);
        let c = resolve(
            serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": r"encoder\.layer\.[0-2]\.attention\.self\.(query|key)",
            "layers_to_transform": [0]}),
        );
        assert_eq!(
            placed(&c).len(),
            6,
            "layers_to_transform does not apply to a regex"
        );
        let c = resolve(
            serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": ["query", "value"], "rank_pattern": {"layer.2.attention.self.query": 3, "value": 4},
            "alpha_pattern": {"value": 2}, "use_rslora": true}),
        );
        assert_eq!(c.rank_and_scaling(2, Query), (3, 4.0 / 3f64.sqrt()));
        assert_eq!(c.rank_and_scaling(1, Query), (2, 4.0 / 2f64.sqrt()));
        assert_eq!(c.rank_and_scaling(1, Value), (4, 1.0));
    }
}
