//! `sinew merge`: a new LoRA adapter folder from several, merged in weight space.

use std::path::PathBuf;

use sinew_backbone::FusedOps;

use sinew::backbone::Pretrained;
use sinew::backend::BackendJob;
use sinew::fusion::{AdapterModel, MergeOptions};

/// What `sinew merge` does.
#[derive(Debug, Clone)]
pub struct MergeJob {
    /// The model folder the adapters were trained on.
    pub model: PathBuf,
    /// LoRA/IA3 adapter folders (AdapterHub, PEFT or sinew).
    pub adapters: Vec<PathBuf>,
    /// How to merge.
    pub options: MergeOptions,
    /// The merged adapter's name.
    pub name: String,
    /// Where its folder (AdapterHub's layout) goes.
    pub output: PathBuf,
}

impl BackendJob for MergeJob {
    type Output = (usize, usize);

    /// Returns the merged adapter's parameter count and the number of inputs.
    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<(usize, usize)> {
        let pretrained = Pretrained::<B>::load(&self.model, None, device)?;
        let mut model = AdapterModel::new(pretrained.model, pretrained.config);
        let mut names = Vec::new();
        for dir in &self.adapters {
            names.push(model.load_adapter(dir, device)?);
        }
        let inputs: Vec<&str> = names.iter().map(String::as_str).collect();
        model.merge_loras(&self.name, &inputs, &self.options, device)?;
        model.save_adapter(&self.output, &self.name, false)?;
        Ok((model.adapter_params(&self.name)?, names.len()))
    }
}
