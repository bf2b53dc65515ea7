//! What people see while a run goes: a progress bar (step, loss, examples/s, ETA) and a JSONL
//! log with one line per step and per epoch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::train::{EpochLog, Observer, StepLog};

/// A progress bar on stderr and, optionally, a JSONL metrics log.
pub struct Monitor {
    bar: ProgressBar,
    log: Option<(PathBuf, BufWriter<File>)>,
    started: Instant,
    examples: usize,
    steps: usize,
    loss: f64,
    label: String,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line<'a> {
    Step(&'a StepLog),
    Epoch(&'a EpochLog),
}

impl Monitor {
    /// A bar labelled `label`; with `log`, appends JSONL lines to that file (a resumed run adds
    /// to its log).
    pub fn new(label: &str, log: Option<&Path>) -> std::io::Result<Self> {
        let log = log
            .map(|path| {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Ok::<_, std::io::Error>((path.to_path_buf(), BufWriter::new(file)))
            })
            .transpose()?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Ok(Self {
            bar,
            log,
            started: Instant::now(),
            examples: 0,
            steps: 0,
            loss: 0.0,
            label: label.to_string(),
        })
    }

    fn write(&mut self, line: &Line) {
        if let Some((path, file)) = &mut self.log {
            let ok = serde_json::to_writer(&mut *file, line).is_ok()
                && file.write_all(b"\n").is_ok()
                && file.flush().is_ok();
            if !ok {
                tracing::warn!("could not write the metrics log {}", path.display());
            }
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Monitor {
    fn step(&mut self, log: &StepLog) {
        self.bar.set_length(log.total as u64);
        self.bar.set_position(log.step as u64);
        self.examples += log.examples;
        self.steps += 1;
        // A running mean over the last ~20 steps reads better than one batch's loss.
        let weight = 1.0 / self.steps.min(20) as f64;
        self.loss += (log.loss as f64 - self.loss) * weight;
        let rate = self.examples as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar
            .set_message(format!("loss {:.4}  {rate:.1} ex/s", self.loss));
        self.write(&Line::Step(log));
    }

    fn epoch(&mut self, log: &EpochLog) {
        // `suspend` prints even when the bar is hidden (stderr not a terminal).
        self.bar.suspend(|| eprintln!(
            "{}: epoch {} (step {}): train loss {:.4}, dev accuracy {:.4}, macro-F1 {:.4}, MCC {:.4}",
            self.label,
            log.epoch,
            log.step,
            log.train_loss,
            log.dev.accuracy,
            log.dev.macro_f1,
            log.dev.mcc
        ));
        self.write(&Line::Epoch(log));
    }
}
