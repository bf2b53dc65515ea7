//! Peak resident memory of one kind of work, each in its own process (the peak of a process
//! only grows): three adapter training steps (seq_bn, 32 × 128) or three inference calls
//! (64 × 128, one seq_bn adapter) on the real all-MiniLM-L6-v2.
//!
//! `cargo bench --bench peak_memory --features flex -- BACKEND WORK` prints one JSON line;
//! BACKEND is ndarray or flex, WORK `train_step_seq_bn_32x128` or `inference_64x128`.
//! `tools/bench-adapters.sh` runs it beside PyTorch's twin (`bench_adapters.py --peak WORK`).

mod common;

use burn::backend::Autodiff;
use burn::optim::AdamWConfig;
use common::{model, step, task, texts_input};
use sinew::backbone::Start;
use sinew::fusion::AdapterModel;
use sinew::trainer::train::{set_regime, Regime};
use sinew_backbone::FusedOps;

fn run<B: FusedOps>(work: &str) {
    match work {
        "train_step_seq_bn_32x128" => {
            let (mut model, tokenizer) = model::<Autodiff<B>>(1, 128);
            set_regime(&mut model, &Regime::Adapters, &[task("a0")]).unwrap();
            model.set_active(Some("a0")).unwrap();
            let input = texts_input(&tokenizer, 32, 128);
            let mut optimizer = AdamWConfig::new().init::<Autodiff<B>, AdapterModel<_>>();
            for _ in 0..3 {
                (model, _) = step(model, &mut optimizer, &Start::Tokens(&input));
            }
        }
        "inference_64x128" => {
            let (mut model, tokenizer) = model::<B>(1, 128);
            model.set_active(Some("a0")).unwrap();
            let input = texts_input(&tokenizer, 64, 128);
            for _ in 0..3 {
                model.forward(&input).unwrap().logits.unwrap().into_data();
            }
        }
        other => panic!("unknown work `{other}` (train_step_seq_bn_32x128, inference_64x128)"),
    }
}

/// The process's peak resident set (`VmHWM`), MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024.0
}

fn main() {
    // `cargo bench` adds `--bench`; the two positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [backend, work] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench peak_memory -- ndarray|flex WORK");
        std::process::exit(2);
    };
    match backend.as_str() {
        #[cfg(feature = "ndarray")]
        "ndarray" => run::<sinew::backend::NdArrayBackend>(work),
        #[cfg(feature = "flex")]
        "flex" => run::<sinew::backend::FlexBackend>(work),
        other => panic!("backend `{other}` is not compiled in"),
    }
    println!(
        r#"{{"backend": "{backend}", "work": "{work}", "peak_rss_mib": {:.0}}}"#,
        peak_rss_mib()
    );
}
