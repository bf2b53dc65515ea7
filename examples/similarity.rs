//! Sentence similarity with the real all-MiniLM-L6-v2 on the GPU backend.
//!
//! `cargo run --example similarity --features wgpu` (wgpu, the default here), or
//! `cargo run --example similarity --features wgpu,flex -- --backend flex` for a CPU backend.
//! Prints the cosine similarity of every pair of sentences (mean-pooled, as sentence-transformers does).

use clap::Parser;
use sinew::backbone::Pretrained;
use sinew::backend::{BackendJob, BackendKind};
use sinew::data::assets;
use sinew_backbone::FusedOps;

#[derive(Parser)]
struct Args {
    /// Backend to run on.
    #[arg(long, default_value_t = BackendKind::Wgpu)]
    backend: BackendKind,
}

const SENTENCES: [&str; 4] = [
    "A man is playing a guitar.",
    "Someone plays an instrument on stage.",
    "The stock market fell sharply today.",
    "Shares dropped as investors panicked.",
];

struct Similarity;

impl BackendJob for Similarity {
    type Output = Vec<Vec<f32>>;

    fn run<B: FusedOps>(self, device: &B::Device) -> anyhow::Result<Vec<Vec<f32>>> {
        let model = Pretrained::<B>::load(&assets::ensure_default_model()?, None, device)?;
        let tokens = model.tokenizer.encode(&SENTENCES)?;
        let pooled = model.model.forward(&tokens.to_input(device)).mean_pooled();
        let unit = pooled.clone() / (pooled.powi_scalar(2).sum_dim(1).sqrt());
        let cosine = unit.clone().matmul(unit.transpose());
        let n = SENTENCES.len();
        let flat = cosine.into_data().to_vec::<f32>()?;
        Ok(flat.chunks(n).map(<[f32]>::to_vec).collect())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cosine = args.backend.run(Similarity)?;
    for (i, row) in cosine.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:5.2}")).collect();
        println!("{}  {}", cells.join(" "), SENTENCES[i]);
    }
    Ok(())
}
