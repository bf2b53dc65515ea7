//! The `sinew` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sinew::backend::BackendKind;
use sinew::data::assets;
use sinew::fusion::{MergeMethod, MergeOptions};

use cli::bench::{BenchJob, Work};
use cli::demo::Demo;
use cli::encode::EncodeJob;
use cli::merge::MergeJob;
use cli::run::{DataSpec, EvalJob, Method, PredictJob, RunSpec, TrainJob};

mod cli;

#[derive(Parser)]
#[command(
    name = "sinew",
    version,
    about = "Adapters and AdapterFusion on a frozen transformer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and verify the default model (all-MiniLM-L6-v2) into $SINEW_HOME, and with --task
    /// the suite's datasets (split into $SINEW_HOME/data/<task>); prints what it prepared.
    Fetch {
        /// A task of the suite to fetch and split (repeatable; `all` for every task).
        #[arg(long = "task")]
        tasks: Vec<String>,
        /// Seed of the train/dev/test splits.
        #[arg(long, default_value_t = 13)]
        seed: u64,
    },
    /// Print what an adapter folder holds: method, config, parameter counts, head.
    Inspect {
        /// The adapter folder (AdapterHub layout).
        dir: PathBuf,
    },
    /// Encode one text per line into token ids, hidden states and mean-pooled embeddings (JSON).
    Encode {
        /// HF model folder (config.json, model.safetensors, tokenizer.json); default: all-MiniLM-L6-v2, fetched if missing.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Text file, one text per line.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the JSON.
        #[arg(long)]
        output: PathBuf,
        /// Burn backend to run on (default: the fastest CPU backend compiled in).
        #[arg(long, default_value_t)]
        backend: BackendKind,
        /// Truncate inputs at N tokens (default: the model's maximum positions).
        #[arg(long)]
        max_len: Option<usize>,
        /// Texts per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Adapter folder saved by AdapterHub's `save_adapter` (repeatable).
        #[arg(long = "adapter")]
        adapters: Vec<PathBuf>,
        /// Fusion folder saved by AdapterHub's `save_adapter_fusion` (repeatable; its adapters
        /// must be given with --adapter).
        #[arg(long = "fusion")]
        fusions: Vec<PathBuf>,
        /// Head folder saved alone by AdapterHub's `save_head` (repeatable): it predicts for the
        /// adapter or fusion it was saved with.
        #[arg(long = "head")]
        heads: Vec<PathBuf>,
        /// The setup to activate: an adapter name or an expression such as "Fuse(a, b)",
        /// "Stack(a, b)", "Parallel(a, b)" (default: the only fusion, or the only adapter, given).
        #[arg(long)]
        setup: Option<String>,
        /// Reproduce AdapterHub's outputs where sinew corrects its behaviour (Average's extra
        /// 1/N, residual_before on the keys).
        #[arg(long)]
        adapterhub_semantics: bool,
        /// Draw the mean fusion attention per layer × adapter into this .png or .svg file.
        #[arg(long)]
        fusion_plot: Option<PathBuf>,
    },
    /// The main job: train adapters on a few suite tasks, fuse them for a low-resource target,
    /// and print head-only / ST-A / fusion test accuracy (with pictures).
    Demo(Demo),
    /// Train adapters (one task: ST-A; several: MT-A), a head on the frozen backbone, or the
    /// whole model, on a suite task or your own CSV/TSV/JSONL file.
    Train(TrainArgs),
    /// Train an AdapterFusion of trained adapters (AdapterFusion's stage two) on a task.
    Fuse(TrainArgs),
    /// Score a trained run on a task's test (or dev) split, or on a labelled file.
    Eval {
        /// The run folder (`sinew train --out`).
        #[arg(long)]
        run: PathBuf,
        /// Which of the run's tasks (default: its first).
        #[arg(long)]
        task: Option<String>,
        /// `test` or `dev`.
        #[arg(long, default_value = "test")]
        split: String,
        /// A labelled file to score instead (same columns as the run's data).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Texts per forward pass.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Burn backend to run on (default: the fastest CPU backend compiled in).
        #[arg(long, default_value_t)]
        backend: BackendKind,
    },
    /// Label every line of a text file with a trained run (JSONL: text, label, probabilities).
    Predict {
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
        /// Which of the run's tasks (default: its first).
        #[arg(long)]
        task: Option<String>,
        /// One text per line.
        #[arg(long)]
        input: PathBuf,
        /// Where the JSONL goes.
        #[arg(long)]
        output: PathBuf,
        /// Texts per forward pass.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Burn backend to run on (default: the fastest CPU backend compiled in).
        #[arg(long, default_value_t)]
        backend: BackendKind,
    },
    /// Time a standard work (the criterion benches' works and inputs) on this machine and
    /// backend; prints one JSON object (median, min and max seconds per call).
    Bench {
        /// train-step, inference or fuse-step.
        #[arg(long, value_enum, default_value_t = Work::TrainStep)]
        work: Work,
        /// Adapter preset (seq_bn, double_seq_bn, par_bn, scaled_par_bn, lora, ia3,
        /// prefix_tuning, prompt_tuning) or a JSON config file.
        #[arg(long, default_value = "seq_bn")]
        adapter: String,
        /// Texts per call.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Tokens per text.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Adapters fused by fuse-step.
        #[arg(long, default_value_t = 8)]
        fuse: usize,
        /// Timed calls (after one untimed warm-up call).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// HF model folder (default: all-MiniLM-L6-v2, fetched if missing).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Burn backend to run on (default: the fastest CPU backend compiled in).
        #[arg(long, default_value_t)]
        backend: BackendKind,
    },
    /// Serve adapters, fusions and their heads over HTTP (/embed, /predict, /v1/embeddings, a
    /// page at /), batching requests across clients and adapters.
    Serve(cli::serve::ServeArgs),
    /// Merge LoRA (or IA3) adapters in weight space into a new adapter folder.
    Merge {
        /// HF model folder the adapters belong to; default: all-MiniLM-L6-v2.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Adapter folder (AdapterHub, PEFT or sinew; repeatable, two or more).
        #[arg(long = "adapter", required = true)]
        adapters: Vec<PathBuf>,
        /// linear, cat, svd, ties, dare_linear or dare_ties.
        #[arg(long, default_value = "linear")]
        method: MergeMethod,
        /// One weight per adapter, comma-separated (default: equal weights summing to 1).
        #[arg(long, value_delimiter = ',')]
        weights: Vec<f64>,
        /// Fraction of entries TIES and DARE keep.
        #[arg(long, default_value_t = 0.5)]
        density: f64,
        /// Rank of the result of svd, ties and dare (default: the largest input rank).
        #[arg(long)]
        rank: Option<usize>,
        /// Seed of DARE's random drops.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The merged adapter's name.
        #[arg(long)]
        name: String,
        /// Folder to write (AdapterHub's layout).
        #[arg(long)]
        output: PathBuf,
        /// Burn backend to run on (default: the fastest CPU backend compiled in).
        #[arg(long, default_value_t)]
        backend: BackendKind,
    },
}

/// What `sinew train` and `sinew fuse` take; flags override the run file.
#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML or JSON run file (see README); the flags below override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A suite task (repeatable: several train jointly, MT-A).
    #[arg(long = "task")]
    tasks: Vec<String>,
    /// The suite's training split: train, train_100 or train_500.
    #[arg(long)]
    split: Option<String>,
    /// Your training file (.csv, .tsv, .jsonl) instead of a suite task.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Your dev file (default: 10% of --train).
    #[arg(long)]
    dev: Option<PathBuf>,
    /// Your test file.
    #[arg(long)]
    test: Option<PathBuf>,
    /// The text column of your files.
    #[arg(long, default_value = "text")]
    text_col: String,
    /// The second-text column, for sentence pairs.
    #[arg(long)]
    pair_col: Option<String>,
    /// The label column of your files.
    #[arg(long, default_value = "label")]
    label_col: String,
    /// Name of your data's task (adapter and head name).
    #[arg(long, default_value = "task")]
    name: String,
    /// Skip (and count) malformed rows instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Keep at most N training examples.
    #[arg(long)]
    max_train: Option<usize>,
    /// Keep at most N dev/test examples.
    #[arg(long)]
    max_eval: Option<usize>,
    /// adapter, head or full (`sinew train`; `sinew fuse` is always fusion).
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Adapter config: seq_bn, double_seq_bn, par_bn, scaled_par_bn, lora, ia3, prefix_tuning,
    /// prompt_tuning, or a JSON config file.
    #[arg(long)]
    adapter_config: Option<String>,
    /// Adapter folders to fuse (repeatable; `sinew fuse`).
    #[arg(long = "adapter")]
    adapters: Vec<PathBuf>,
    /// dynamic or static fusion.
    #[arg(long)]
    fusion: Option<String>,
    /// Train the fused adapters too.
    #[arg(long)]
    unfreeze_adapters: bool,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Examples per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Truncate texts at N tokens.
    #[arg(long)]
    max_len: Option<usize>,
    /// Stop after N steps with a checkpoint (finish later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Compute the layers no trained adapter changes once per example and keep their outputs
    /// (MiB of memory; the rest spills to a temporary file). Those layers then run without
    /// dropout.
    #[arg(long, value_name = "MIB")]
    activation_cache: Option<usize>,
    /// HF model folder (default: all-MiniLM-L6-v2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The run folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Burn backend to run on (default: the fastest CPU backend compiled in).
    #[arg(long, default_value_t)]
    backend: BackendKind,
}

impl TrainArgs {
    /// The run: the file's, with the flags given on top.
    fn spec(&self, fuse: bool) -> anyhow::Result<RunSpec> {
        let mut spec = match &self.config {
            Some(path) => RunSpec::from_file(path)?,
            None => RunSpec::default(),
        };
        let data = |task: String| DataSpec {
            task,
            split: self.split.clone().unwrap_or_else(|| "train".into()),
            max_train: self.max_train,
            max_eval: self.max_eval,
            ..DataSpec::default()
        };
        if let Some(file) = &self.train {
            spec.tasks = vec![DataSpec {
                train_file: Some(file.clone()),
                dev_file: self.dev.clone(),
                test_file: self.test.clone(),
                text_col: self.text_col.clone(),
                pair_col: self.pair_col.clone(),
                label_col: self.label_col.clone(),
                skip_bad: self.skip_bad,
                ..data(self.name.clone())
            }];
        } else if !self.tasks.is_empty() {
            spec.tasks = self.tasks.iter().cloned().map(data).collect();
        }
        if fuse {
            spec.method = Method::Fusion;
        } else if let Some(method) = self.method {
            if method == Method::Fusion {
                anyhow::bail!("use `sinew fuse` to train a fusion");
            }
            spec.method = method;
        }
        if !self.adapters.is_empty() {
            spec.fuse = self.adapters.clone();
        }
        let t = &mut spec.train;
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.batch_size = self.batch_size.unwrap_or(t.batch_size);
        t.learning_rate = self.lr.unwrap_or(t.learning_rate);
        t.seed = self.seed.unwrap_or(t.seed);
        t.stop_after = self.stop_after.or(t.stop_after);
        t.activation_cache_mib = self.activation_cache.or(t.activation_cache_mib);
        spec.adapter = self.adapter_config.clone().unwrap_or(spec.adapter);
        spec.fusion = self.fusion.clone().unwrap_or(spec.fusion);
        spec.unfreeze_adapters |= self.unfreeze_adapters;
        spec.max_len = self.max_len.unwrap_or(spec.max_len);
        spec.model = self.model.clone().or(spec.model);
        Ok(spec)
    }

    fn run(self, fuse: bool) -> anyhow::Result<()> {
        let spec = self.spec(fuse)?;
        let job = TrainJob {
            label: spec
                .tasks
                .iter()
                .map(|t| t.task.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            spec,
            out: self.out.clone(),
            resume: self.resume,
        };
        let results = self.backend.run(job)?;
        for r in &results {
            let test = r.test.map_or("no test split".to_string(), |s| {
                format!(
                    "test accuracy {:.4}, macro-F1 {:.4}, MCC {:.4}",
                    s.accuracy, s.macro_f1, s.mcc
                )
            });
            println!("{}: dev accuracy {:.4}; {test}", r.task, r.dev.accuracy);
        }
        if !results.is_empty() {
            eprintln!("wrote {}", self.out.display());
        }
        Ok(())
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sinew=info,sinew_backbone=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}{}", option_hint(&e));
        std::process::exit(1);
    }
}

/// The library says what went wrong; the binary adds which option sets it.
fn option_hint(e: &anyhow::Error) -> &'static str {
    let max_len = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sinew::backbone::BackboneError>(),
            Some(sinew::backbone::BackboneError::MaxLen { .. })
        )
    });
    if max_len {
        " (lower --max-len)"
    } else {
        ""
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fetch { tasks, seed } => {
            let dir = assets::fetch_default_model()?;
            println!("{}", dir.display());
            let all = tasks.iter().any(|t| t == "all");
            let chosen: Vec<&sinew::data::tasks::Task> = if all {
                sinew::data::tasks::TASKS.iter().collect()
            } else {
                tasks
                    .iter()
                    .map(|t| sinew::data::tasks::task(t))
                    .collect::<Result<_, _>>()?
            };
            for task in chosen {
                let manifest = sinew::data::splits::prepare(task, seed)?;
                let count = |s: &str| manifest.splits.get(s).map_or(0, |i| i.count);
                println!(
                    "{}: {} labels, train {} / dev {} / test {} ({})",
                    task.name,
                    manifest.labels.len(),
                    count("train"),
                    count("dev"),
                    count("test"),
                    sinew::data::splits::task_dir(task.name).display()
                );
            }
        }
        Command::Serve(args) => args.run()?,
        Command::Demo(demo) => {
            demo.run_all()?;
        }
        Command::Train(args) => args.run(false)?,
        Command::Fuse(args) => args.run(true)?,
        Command::Eval {
            run,
            task,
            split,
            file,
            batch_size,
            backend,
        } => {
            let (task, n, s) = backend.run(EvalJob {
                run,
                task,
                split,
                file,
                batch_size,
            })?;
            println!(
                "{task}: {n} examples: accuracy {:.4}, macro-F1 {:.4}, MCC {:.4}",
                s.accuracy, s.macro_f1, s.mcc
            );
        }
        Command::Predict {
            run,
            task,
            input,
            output,
            batch_size,
            backend,
        } => {
            let n = backend.run(PredictJob {
                run,
                task,
                input,
                output: output.clone(),
                batch_size,
            })?;
            eprintln!("labelled {n} texts into {}", output.display());
        }
        Command::Inspect { dir } => print!("{}", cli::inspect::describe(&dir)?),
        Command::Bench {
            work,
            adapter,
            batch,
            seq,
            fuse,
            reps,
            model,
            backend,
        } => {
            let mut result = backend.run(BenchJob {
                work,
                adapter,
                batch,
                seq,
                fuse,
                reps,
                model,
            })?;
            result.backend = backend.name().to_string();
            println!("{}", serde_json::to_string(&result)?);
        }
        Command::Encode {
            model,
            input,
            output,
            backend,
            max_len,
            batch_size,
            adapters,
            fusions,
            heads,
            setup,
            adapterhub_semantics,
            fusion_plot,
        } => {
            let model = match model {
                Some(dir) => dir,
                None => assets::ensure_default_model().context("fetching the default model")?,
            };
            let job = EncodeJob {
                model,
                input,
                output: output.clone(),
                max_len,
                batch_size,
                adapters,
                fusions,
                heads,
                setup,
                adapterhub_semantics,
                fusion_plot,
            };
            let count = backend.run(job)?;
            eprintln!("encoded {count} texts into {}", output.display());
        }
        Command::Merge {
            model,
            adapters,
            method,
            weights,
            density,
            rank,
            seed,
            name,
            output,
            backend,
        } => {
            let model = match model {
                Some(dir) => dir,
                None => assets::ensure_default_model().context("fetching the default model")?,
            };
            let n = adapters.len();
            let weights = if weights.is_empty() {
                vec![1.0 / n as f64; n]
            } else {
                weights
            };
            let job = MergeJob {
                model,
                adapters,
                options: MergeOptions {
                    method,
                    weights,
                    density,
                    rank,
                    seed,
                },
                name,
                output: output.clone(),
            };
            let (params, inputs) = backend.run(job)?;
            eprintln!(
                "merged {inputs} adapters into {} ({params} parameters)",
                output.display()
            );
        }
    }
    Ok(())
}
