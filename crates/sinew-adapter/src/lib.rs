//! sinew-adapter: adapter methods (bottleneck, LoRA, IA3, prefix tuning), prediction heads and
//! AdapterHub/PEFT file I/O, each method acting on the backbone through
//! [`sinew_backbone::Hooks`]. Filled in by the "Adapter methods" work; nothing lives here yet.
