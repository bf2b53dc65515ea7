//! sinew-trainer: datasets, training loops, metrics and checkpoints for adapters and fusions.
//! Filled in by the "Trainer" work; nothing lives here yet.
