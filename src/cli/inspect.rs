//! `sinew inspect DIR`: what an adapter folder holds, without loading a backbone.

use std::fmt::Write;
use std::path::Path;

use sinew::adapter::tensors::TensorFile;
use sinew::adapter::AdapterFolder;

/// A human-readable summary of an adapter folder: method, config, parameter counts, head.
pub fn describe(dir: &Path) -> anyhow::Result<String> {
    let folder = AdapterFolder::read_unchecked(dir)?;
    let weights_file = folder.weights_file("adapter");
    let weights = TensorFile::read(&weights_file)?;
    let mut out = String::new();
    let method = folder.config.summary();
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
