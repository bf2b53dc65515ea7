//! sinew-fusion: AdapterFusion, composition blocks (`Stack`, `Fuse`, `Parallel`, …) and LoRA
//! merges over the adapters of `sinew-adapter`. Filled in by the "AdapterFusion" work; nothing
//! lives here yet.
