//! Resuming from a checkpoint equals the uninterrupted run. Its own test binary: Burn's backend
//! random state (dropout, initialisation) is global to the process, and tests running beside it
//! in other threads would draw from it between steps.

mod common;

use common::training::{adapter_weights, head, multi_task_model, two_tasks};
use sinew::adapter::bottleneck::{BnConfig, ReductionFactor};
use sinew::adapter::MethodConfig;
use sinew::trainer::checkpoint::Checkpoint;
use sinew::trainer::train::{train, Regime, TrainConfig};

/// Joint multi-task training (MT-A) stopped mid-epoch with a checkpoint and resumed in a new
/// model gives the uninterrupted run's losses bit for bit, and the same final weights.
#[test]
fn resume_equals_an_uninterrupted_run() {
    let (_, tokenizer) = multi_task_model(&[]);
    let tasks = two_tasks(&tokenizer);
    let config = TrainConfig {
        epochs: 3,
        batch_size: 2,
        learning_rate: 3e-3,
        patience: 100,
        temperature: 2.0,
        ..TrainConfig::default()
    };
    let (mut whole, _) = multi_task_model(&tasks);
    let uninterrupted = train(
        &mut whole,
        &Regime::Adapters,
        &tasks,
        &config,
        None,
        &mut (),
    )
    .unwrap();
    let total = uninterrupted.losses.len();
    let per_epoch: usize = tasks.iter().map(|t| t.train.len().div_ceil(2)).sum();
    assert_eq!(
        total,
        3 * per_epoch,
        "every batch of every task once per epoch"
    );
    eprintln!("uninterrupted losses: {:?}", uninterrupted.losses);

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = Checkpoint::new(dir.path());
    // Stop in the middle of epoch 2.
    let stop = per_epoch + 2;
    let (mut first, _) = multi_task_model(&tasks);
    let part = train(
        &mut first,
        &Regime::Adapters,
        &tasks,
        &TrainConfig {
            stop_after: Some(stop),
            ..config.clone()
        },
        Some(&checkpoint),
        &mut (),
    )
    .unwrap();
    assert!(part.interrupted);
    assert_eq!(part.losses, uninterrupted.losses[..stop]);
    drop(first);

    let (mut resumed, _) = multi_task_model(&tasks);
    let rest = train(
        &mut resumed,
        &Regime::Adapters,
        &tasks,
        &config,
        Some(&checkpoint),
        &mut (),
    )
    .unwrap();
    assert!(!rest.interrupted);
    assert_eq!(
        rest.losses,
        uninterrupted.losses[stop..],
        "the same losses after resuming"
    );
    assert_eq!(
        rest.epochs, uninterrupted.epochs,
        "the same dev scores per epoch"
    );
    assert_eq!(adapter_weights(&resumed), adapter_weights(&whole));

    // A checkpoint of another run is refused, naming the file.
    let (mut other, _) = multi_task_model(&tasks);
    let err = train(
        &mut other,
        &Regime::Adapters,
        &tasks,
        &TrainConfig {
            learning_rate: 1e-4,
            ..config.clone()
        },
        Some(&checkpoint),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("checkpoint.zip") && err.contains("another run"),
        "{err}"
    );

    // A truncated or corrupt checkpoint is one line naming the file, never a panic.
    let bytes = std::fs::read(checkpoint.path()).unwrap();
    for (what, broken) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("corrupt", bytes.iter().map(|b| b ^ 0x5a).collect()),
    ] {
        std::fs::write(checkpoint.path(), &broken).unwrap();
        let (mut model, _) = multi_task_model(&tasks);
        let err = train(
            &mut model,
            &Regime::Adapters,
            &tasks,
            &config,
            Some(&checkpoint),
            &mut (),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("checkpoint.zip") && !err.contains('\n'),
            "{what}: {err}"
        );
    }

    // A checkpoint whose tensors do not fit the model (the run's adapters were twice as wide) is
    // refused, naming the tensor and both shapes.
    let (mut wide, _) = multi_task_model(&[]);
    for task in &tasks {
        let mut bn = BnConfig::seq_bn();
        bn.reduction_factor = ReductionFactor::Uniform(8.0);
        let device = Default::default();
        wide.add_adapter(&task.name, MethodConfig::Bottleneck(bn), &device)
            .unwrap();
        wide.add_head(&task.name, head(task.classes), &device)
            .unwrap();
    }
    std::fs::write(checkpoint.path(), &bytes).unwrap();
    replace_entry(
        checkpoint.path(),
        "parts.bin",
        &sinew::trainer::checkpoint::parts_to_bytes(&wide).unwrap(),
    );
    let (mut model, _) = multi_task_model(&tasks);
    let err = train(
        &mut model,
        &Regime::Adapters,
        &tasks,
        &config,
        Some(&checkpoint),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("checkpoint.zip")
            && err.contains("parts.bin")
            && err.contains("[384, 24]")
            && err.contains("[384, 48]")
            && !err.contains('\n'),
        "{err}"
    );
}

/// Rewrites `file`, a zip archive, with `name`'s bytes replaced.
fn replace_entry(file: &std::path::Path, name: &str, bytes: &[u8]) {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let entry_name = entry.name().to_string();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        out.start_file(
            entry_name.as_str(),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        out.write_all(if entry_name == name { bytes } else { &content })
            .unwrap();
    }
    std::fs::write(file, out.finish().unwrap().into_inner()).unwrap();
}
