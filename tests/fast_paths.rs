//! The adapter-specialised fast paths give the results of the plain paths: the frozen-prefix
//! activation cache in training, and `Parallel` running the layers below its adapters once.
//! (Mixed-adapter batches in one pass: `fusion_parity::per_example_routing`.)

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;
use common::training::{adapter_weights, head, two_tasks, A};
use common::{max_abs_diff, model_dir, model_without_dropout};
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::MethodConfig;
use sinew::backbone::{AttentionKv, Hooks, Pretrained, Projection, SubLayer};
use sinew::backend::NdArrayBackend;
use sinew::fusion::compose::Composition;
use sinew::fusion::{AdapterModel, Setup};
use sinew::trainer::train::{train, Regime, TaskData, TrainConfig};
use sinew_backbone::LayerNorm;

/// A seq_bn adapter in layers 3–5 only (the lower half left out, as AdapterDrop does).
fn upper_half() -> MethodConfig {
    MethodConfig::Bottleneck(BnConfig {
        leave_out: vec![0, 1, 2],
        ..BnConfig::seq_bn()
    })
}

/// Burn's backend random state is global to the process: the training tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The real model without dropout, an upper-half adapter and a head per task.
fn upper_half_model(dir: &std::path::Path, tasks: &[TaskData]) -> AdapterModel<A> {
    let device = Default::default();
    <A as Backend>::seed(&device, 7);
    let pretrained = Pretrained::<A>::load(dir, None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config);
    for task in tasks {
        model
            .add_adapter(&task.name, upper_half(), &device)
            .unwrap();
        model
            .add_head(&task.name, head(task.classes), &device)
            .unwrap();
    }
    model
}

fn tasks_of(dir: &std::path::Path) -> Vec<TaskData> {
    let tokenizer = Pretrained::<A>::load(dir, None, &Default::default())
        .unwrap()
        .tokenizer;
    two_tasks(&tokenizer)
}

/// MT-A training with the cache — all of it spilled to disk, or all in memory — gives the
/// losses, dev scores and trained weights of the same run without it (the backbone's dropout at
/// 0: the cached layers run without dropout). The layers below the adapters ran once per example.
#[test]
fn activation_cache_gives_the_uncached_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model_without_dropout();
    let tasks = tasks_of(dir.path());
    let examples: usize = tasks.iter().map(|t| t.train.len()).sum();
    let base = upper_half_model(dir.path(), &tasks);
    let config = TrainConfig {
        epochs: 3,
        batch_size: 4,
        patience: 5,
        ..TrainConfig::default()
    };
    let mut plain = base.clone();
    let want = train(
        &mut plain,
        &Regime::Adapters,
        &tasks,
        &config,
        None,
        &mut (),
    )
    .unwrap();
    assert!(want.cache.is_none());
    let want_weights = adapter_weights(&plain);
    for mib in [0, 64] {
        let mut cached = base.clone();
        let config = TrainConfig {
            activation_cache_mib: Some(mib),
            ..config.clone()
        };
        let got = train(
            &mut cached,
            &Regime::Adapters,
            &tasks,
            &config,
            None,
            &mut (),
        )
        .unwrap();
        let cache = got.cache.expect("the adapters leave layers 0-2 out");
        assert_eq!(cache.layer, 3);
        let expected = if mib == 0 {
            (0, examples)
        } else {
            (examples, 0)
        };
        assert_eq!((cache.in_memory, cache.on_disk), expected);
        let diff = max_abs_diff(&got.losses, &want.losses);
        assert!(diff <= 1e-5, "{mib} MiB: losses differ by {diff}");
        for (g, w) in got.epochs.iter().zip(&want.epochs) {
            assert_eq!(g.dev_per_task, w.dev_per_task, "{mib} MiB");
        }
        let diff = max_abs_diff(&adapter_weights(&cached), &want_weights);
        assert!(diff <= 1e-5, "{mib} MiB: weights differ by {diff}");
    }
}

/// A head-only run leaves every layer as pretrained: the whole encoder runs once per example.
#[test]
fn activation_cache_of_a_head_only_run_covers_the_encoder() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model_without_dropout();
    let tasks = &tasks_of(dir.path())[..1];
    let base = upper_half_model(dir.path(), tasks);
    let regime = Regime::Head { backbone: false };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut plain = base.clone();
    let want = train(&mut plain, &regime, tasks, &config, None, &mut ()).unwrap();
    let mut cached = base;
    let config = TrainConfig {
        activation_cache_mib: Some(64),
        ..config
    };
    let got = train(&mut cached, &regime, tasks, &config, None, &mut ()).unwrap();
    assert_eq!(got.cache.map(|c| c.layer), Some(6));
    let diff = max_abs_diff(&got.losses, &want.losses);
    assert!(diff <= 1e-5, "losses differ by {diff}");
    let diff = max_abs_diff(&adapter_weights(&cached), &adapter_weights(&plain));
    assert!(diff <= 1e-5, "weights differ by {diff}");
}

type B = NdArrayBackend;

/// Adds N(0, 0.05) noise to every weight, so that two adapters differ.
struct Jitter;

impl ModuleMapper<B> for Jitter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let noise = tensor.random_like(Distribution::Normal(0.0, 0.05));
        Param::from_mapped_value(id, tensor + noise, mapper)
    }
}

/// Records the batch rows each layer's attention runs on.
struct Rows<H> {
    inner: H,
    rows: Vec<(usize, usize)>,
}

impl<H: Hooks<B>> Hooks<B> for Rows<H> {
    fn embedded(
        &mut self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        self.inner.embedded(hidden, keep)
    }
    fn project(
        &mut self,
        layer: usize,
        site: Projection,
        linear: &Linear<B>,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        if site == Projection::Query {
            self.rows.push((layer, x.dims()[0]));
        }
        self.inner.project(layer, site, linear, x)
    }
    fn attention_kv(&mut self, layer: usize, kv: AttentionKv<B>) -> AttentionKv<B> {
        self.inner.attention_kv(layer, kv)
    }
    fn sublayer_end(
        &mut self,
        layer: usize,
        site: SubLayer,
        output: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        layer_norm: &LayerNorm<B>,
    ) -> Tensor<B, 3> {
        self.inner
            .sublayer_end(layer, site, output, residual, layer_norm)
    }
}

/// `Parallel(a, b)` of two adapters at the FFN ends of layers 3–5: layers 0–2 and layer 3's
/// attention run once on the batch, the rest on one copy per adapter, and each copy is that adapter's own output; switching the
/// active adapter back and forth gives each adapter's output again (nothing is reloaded).
#[test]
fn parallel_runs_the_shared_layers_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <B as Backend>::seed(&device, 11);
    let pretrained = Pretrained::<B>::load(&model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config);
    for name in ["a", "b"] {
        model.add_adapter(name, upper_half(), &device).unwrap();
    }
    for name in ["a", "b"] {
        let adapter = model.adapter_mut(name).unwrap();
        *adapter = adapter.clone().map(&mut Jitter);
    }
    let texts = [
        "The parallel block shares the frozen layers below its adapters.",
        "Two tasks, one pass.",
        "A third sentence of a different length than the others here.",
    ];
    let input = pretrained
        .tokenizer
        .encode(&texts.map(String::from))
        .unwrap()
        .to_input::<B>(&device);
    let n = texts.len();
    let hidden = |m: &AdapterModel<B>| {
        m.forward(&input)
            .unwrap()
            .encoded
            .last_hidden_state
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    model.set_active(Some("a")).unwrap();
    let a = hidden(&model);
    model.set_active(Some("b")).unwrap();
    let b = hidden(&model);
    assert!(max_abs_diff(&a, &b) > 1e-3, "the adapters differ");
    model.set_active(Some("a")).unwrap();
    assert_eq!(hidden(&model), a);

    let setup = Setup::parse("Parallel(a, b)").unwrap();
    let mut rows = Rows {
        inner: Composition::new(&model, &setup, Default::default(), false),
        rows: Vec::new(),
    };
    let both = model.backbone().forward_with(&input, &mut rows);
    let per_layer: Vec<(usize, usize)> = (0..6)
        .map(|l| (l, if l <= 3 { n } else { 2 * n }))
        .collect();
    assert_eq!(rows.rows, per_layer);
    let both = both.last_hidden_state.into_data().to_vec::<f32>().unwrap();
    let half = both.len() / 2;
    let diff = max_abs_diff(&both[..half], &a).max(max_abs_diff(&both[half..], &b));
    assert!(diff <= 1e-5, "{diff}");
}
