//! Training helpers shared by `tests/training.rs` and `tests/resume.rs`: two real tasks and a
//! model with an adapter and head per task.

use burn::backend::Autodiff;
use sinew::adapter::bottleneck::BnConfig;
use sinew::adapter::{HeadConfig, MethodConfig};
use sinew::backbone::Pretrained;
use sinew::backend::NdArrayBackend;
use sinew::data::tasks::{parse_sms_spam, parse_trec};
use sinew::fusion::AdapterModel;
use sinew::trainer::batching::tokenize;
use sinew::trainer::train::TaskData;

use super::fixture_path;

/// The autodiff backend the training tests run on.
pub type A = Autodiff<NdArrayBackend>;

/// The TREC and SMS-spam excerpts (real text), tokenized, as two tasks.
pub fn two_tasks(tokenizer: &sinew::backbone::TextTokenizer) -> Vec<TaskData> {
    let trec =
        parse_trec(&std::fs::read(fixture_path("data/question_labels.txt")).unwrap()).unwrap();
    let sms = parse_sms_spam(
        &std::fs::read(fixture_path("data/sms-spam.csv")).unwrap(),
        "sms-spam.csv",
    )
    .unwrap();
    [("trec", trec), ("sms", sms)]
        .into_iter()
        .map(|(name, examples)| {
            let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
            labels.sort();
            labels.dedup();
            let tokens = tokenize(tokenizer, &examples, &labels).unwrap();
            TaskData {
                name: name.into(),
                train: tokens.clone(),
                dev: tokens,
                classes: labels.len(),
            }
        })
        .collect()
}

/// The real model (dropout on: resuming must replay it) with a seq_bn adapter and a head per
/// task; every model built here starts from the same weights (a fixed backend seed).
pub fn multi_task_model(tasks: &[TaskData]) -> (AdapterModel<A>, sinew::backbone::TextTokenizer) {
    let device = Default::default();
    <A as burn::prelude::Backend>::seed(&device, 7);
    let pretrained = Pretrained::<A>::load(&super::model_dir(), None, &device).unwrap();
    let mut model = AdapterModel::new(pretrained.model, pretrained.config.clone());
    for task in tasks {
        model
            .add_adapter(
                &task.name,
                MethodConfig::Bottleneck(BnConfig::seq_bn()),
                &device,
            )
            .unwrap();
        model
            .add_head(&task.name, head(task.classes), &device)
            .unwrap();
    }
    (model, pretrained.tokenizer)
}

pub fn head(classes: usize) -> HeadConfig {
    HeadConfig {
        head_type: "classification".into(),
        num_labels: classes,
        layers: 2,
        activation_function: sinew::adapter::activation::Activation::Tanh,
        label2id: None,
        use_pooler: false,
        bias: true,
        dropout_prob: None,
    }
}

/// Every weight of the adapters and heads, flattened.
pub fn adapter_weights(model: &AdapterModel<A>) -> Vec<f32> {
    let bytes = sinew::trainer::checkpoint::parts_to_bytes(model).unwrap();
    // Compare values, not record ids: decode into a fresh copy's slots and read its tensors.
    let mut copy = model.clone();
    sinew::trainer::checkpoint::restore_from_bytes(&mut copy, bytes).unwrap();
    let mut out = Vec::new();
    for name in copy.adapter_names() {
        out.extend(flat_params(copy.adapter(name).unwrap()));
    }
    for name in copy.head_names() {
        out.extend(flat_params(copy.head(name).unwrap()));
    }
    out
}

pub fn flat_params<M: burn::module::Module<A>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor<A> for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::prelude::Tensor<A, D>>,
        ) {
            self.0
                .extend(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}
