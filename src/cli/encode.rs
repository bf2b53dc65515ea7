//! `sinew encode`: a text file in, [`Encoded`] JSON out (and a fusion-attention picture).

use std::path::PathBuf;

use anyhow::bail;
use sinew_backbone::FusedOps;

use sinew::backbone::files::write_atomic_with;
use sinew::backbone::Pretrained;
use sinew::backend::BackendJob;
use sinew::encode::{encode_texts, mean_fusion_attentions, read_texts};
use sinew::fusion::{AdapterModel, Setup};

/// Everything `sinew encode` needs, run on the chosen backend.
#[derive(Debug, Clone)]
pub struct EncodeJob {
    /// The model folder.
    pub model: PathBuf,
    /// One text per line.
    pub input: PathBuf,
    /// Where the JSON goes.
    pub output: PathBuf,
    /// Truncation length; `None` is the model's limit.
    pub max_len: Option<usize>,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Adapter folders (AdapterHub layout) to load.
    pub adapters: Vec<PathBuf>,
    /// Fusion folders (AdapterHub's `save_adapter_fusion` layout), loaded after the adapters.
    pub fusions: Vec<PathBuf>,
    /// Head folders (AdapterHub's `save_head` layout), loaded last.
    pub heads: Vec<PathBuf>,
    /// The setup to activate (default: the only fusion, or the only adapter, loaded).
    pub setup: Option<String>,
    /// Reproduce AdapterHub's behaviour where sinew corrects it (see `sinew_fusion`).
    pub adapterhub_semantics: bool,
    /// Where to draw the mean fusion attention per layer × adapter (.png or .svg).
    pub fusion_plot: Option<PathBuf>,
}

impl BackendJob for EncodeJob {
    type Output = usize;

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<usize> {
        let texts = read_texts(&self.input)?;
        let pretrained = Pretrained::<B>::load(&self.model, self.max_len, device)?;
        let mut model = AdapterModel::new(pretrained.model, pretrained.config);
        for dir in &self.adapters {
            model.load_adapter(dir, device)?;
        }
        let mut fusions = Vec::new();
        for dir in &self.fusions {
            fusions.push(model.load_fusion(dir, device)?);
        }
        for dir in &self.heads {
            model.load_head(dir, device)?;
        }
        if self.adapterhub_semantics {
            model.set_semantics(sinew::fusion::Semantics::AdapterHub);
        }
        let setup = match (
            &self.setup,
            model.adapter_names().as_slice(),
            fusions.as_slice(),
        ) {
            (Some(setup), _, _) => Some(Setup::parse(setup).map_err(anyhow::Error::msg)?),
            (None, _, [fusion]) => Some(fusion.setup()),
            (None, [only], []) => Some(Setup::adapter(*only)),
            (None, [], []) => None,
            (None, names, _) => bail!(
                "several adapters loaded ({}): choose one with --setup",
                names.join(", ")
            ),
        };
        model.activate(setup)?;
        let encoded = encode_texts(
            &model,
            &pretrained.tokenizer,
            &texts,
            self.batch_size,
            device,
        )?;
        write_atomic_with(&self.output, |w| {
            serde_json::to_writer(w, &encoded).map_err(std::io::Error::other)
        })?;
        if let Some(path) = &self.fusion_plot {
            let Some(sinew::fusion::Setup::Fuse(children)) = model.active() else {
                bail!("--fusion-plot needs a Fuse(…) setup");
            };
            let adapters: Vec<String> = children.iter().map(ToString::to_string).collect();
            let (rows, values): (Vec<String>, Vec<Vec<f32>>) =
                mean_fusion_attentions(&encoded).into_iter().unzip();
            crate::cli::plot::heatmap(
                path,
                "mean fusion attention per layer",
                &rows,
                &adapters,
                &values,
            )?;
        }
        Ok(texts.len())
    }
}
