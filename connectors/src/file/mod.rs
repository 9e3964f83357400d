//! The `file` source (JSON lines, checkpointed, optional `follow`) and the `file` sink.

mod identity;
mod sink;
mod source;

pub use sink::FileSinkConfig;
pub use source::{FileSourceConfig, StartAt};
