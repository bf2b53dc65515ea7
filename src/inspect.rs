//! `sinew inspect DIR`: what an adapter folder holds, without loading a backbone.

use std::fmt::Write;
use std::path::Path;

use crate::adapter::tensors::TensorFile;
use crate::adapter::{AdapterFolder, MethodConfig};

/// A human-readable summary of an adapter folder: method, config, parameter counts, head.
pub fn describe(dir: &Path) -> anyhow::Result<String> {
    let folder = AdapterFolder::read_unchecked(dir)?;
    let weights_file = folder.weights_file("adapter");
    let weights = TensorFile::read(&weights_file)?;
    let mut out = String::new();
    let method = match &folder.config {
        MethodConfig::Bottleneck(c) => format!(
            "bottleneck ({}, {}, reduction {}, {})",
            if c.is_parallel {
                "parallel"
            } else {
                "sequential"
            },
            match (c.mh_adapter, c.output_adapter) {
                (true, true) => "after attention and FFN",
                (true, false) => "after attention",
                _ => "after FFN",
            },
            serde_json::to_string(&c.reduction_factor)?,
            String::from(c.non_linearity),
        ),
        MethodConfig::Lora(c) => format!(
            "{} (r {}, alpha {}, attention {:?}{}{})",
            if c.composition_mode == crate::adapter::lora::CompositionMode::Scale {
                "ia3"
            } else {
                "lora"
            },
            c.r,
            c.alpha,
            if c.selfattn_lora {
                c.attn_matrices.clone()
            } else {
                vec![]
            },
            if c.intermediate_lora { ", FFN in" } else { "" },
            if c.output_lora { ", FFN out" } else { "" },
        ),
        MethodConfig::Prefix(c) => format!(
            "prefix tuning (length {}, {}{})",
            c.prefix_length,
            if c.flat {
                "flat".to_string()
            } else {
                format!(
                    "MLP width {} {}",
                    c.bottleneck_size,
                    String::from(c.non_linearity)
                )
            },
            if c.use_gating { ", gated" } else { "" },
        ),
        MethodConfig::Prompt(c) => format!(
            "prompt tuning (length {}, {})",
            c.prompt_length,
            serde_json::to_string(&c.combine)?
        ),
    };
    writeln!(out, "adapter  {} ({})", folder.name, dir.display())?;
    writeln!(out, "method   {method}")?;
    writeln!(
        out,
        "params   {} ({})",
        weights.num_values(),
        weights_file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    )?;
    writeln!(
        out,
        "config   {}",
        serde_json::to_string(&folder.config.to_json())?
    )?;
    match &folder.head {
        Some(head) => {
            let file = TensorFile::read(&folder.weights_file("model_head"))?;
            writeln!(
                out,
                "head     {}, {} labels {:?}, {} layers, {} params",
                head.head_type,
                head.num_labels,
                head.labels(),
                head.layers,
                file.num_values()
            )?;
        }
        None => writeln!(out, "head     none")?,
    }
    Ok(out)
}
