//! The `sinew` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sinew::backbone::assets;
use sinew::backend::BackendKind;
use sinew::encode::EncodeJob;
use sinew::fusion::{MergeMethod, MergeOptions};
use sinew::merge::MergeJob;

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
        /// Burn backend to run on.
        #[arg(long, value_enum, default_value_t = BackendKind::compiled()[0])]
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
        /// Burn backend to run on.
        #[arg(long, value_enum, default_value_t = BackendKind::compiled()[0])]
        backend: BackendKind,
    },
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
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fetch { tasks, seed } => {
            let dir = assets::fetch_default_model()?;
            println!("{}", dir.display());
            let all = tasks.iter().any(|t| t == "all");
            let chosen: Vec<&sinew::trainer::tasks::Task> = if all {
                sinew::trainer::tasks::TASKS.iter().collect()
            } else {
                tasks
                    .iter()
                    .map(|t| sinew::trainer::tasks::task(t))
                    .collect::<Result<_, _>>()?
            };
            for task in chosen {
                let manifest = sinew::trainer::data::prepare(task, seed)?;
                let count = |s: &str| manifest.splits.get(s).map_or(0, |i| i.count);
                println!(
                    "{}: {} labels, train {} / dev {} / test {} ({})",
                    task.name,
                    manifest.labels.len(),
                    count("train"),
                    count("dev"),
                    count("test"),
                    sinew::trainer::data::task_dir(task.name).display()
                );
            }
        }
        Command::Inspect { dir } => print!("{}", sinew::inspect::describe(&dir)?),
        Command::Encode {
            model,
            input,
            output,
            backend,
            max_len,
            batch_size,
            adapters,
            fusions,
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
