//! `encode` throughput on the real all-MiniLM-L6-v2: batch 32 × 128 tokens, forward pass only
//! (tokenization excluded, as in tools/reference/bench_encode.py, its PyTorch twin).
//!
//! `cargo bench --bench encode --features flex` (add `wgpu` to include the GPU backend);
//! `tools/bench-encode.sh` runs this and PyTorch in one go and prints the ratios.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sinew::backbone::{FusedOps, Pretrained};
use sinew::data::assets;

const BATCH: usize = 32;
const TOKENS: usize = 128;

fn texts() -> Vec<String> {
    // Real prose, long enough to be cut at 128 tokens, different per row.
    (0..BATCH)
        .map(|i| {
            (0..20)
                .map(|j| format!("Row {i} clause {j}: adapters keep the pretrained encoder frozen while tasks share it."))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn bench_backend<B: FusedOps>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let dir = assets::ensure_default_model().expect("fetch the model: cargo run -- fetch");
    let model = Pretrained::<B>::load(&dir, Some(TOKENS), &device).unwrap();
    let tokens = model.tokenizer.encode(&texts()).unwrap();
    assert!(tokens.input_ids.iter().all(|r| r.len() == TOKENS));
    let input = tokens.to_input::<B>(&device);
    let mut group = c.benchmark_group("encode_32x128");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter(|| {
            let out = model.model.forward(&input);
            // Reading the result back forces lazy backends to finish the work.
            out.last_hidden_state.into_data()
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "ndarray")]
    bench_backend::<sinew::backend::NdArrayBackend>(c, "ndarray");
    #[cfg(feature = "flex")]
    bench_backend::<sinew::backend::FlexBackend>(c, "flex");
    #[cfg(feature = "wgpu")]
    bench_backend::<sinew::backend::WgpuBackend>(c, "wgpu");
}

criterion_group!(encode, benches);
criterion_main!(encode);
