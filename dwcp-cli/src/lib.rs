//! The `dwcp` command line: human-readable tables of what the API returns, and the decoder of
//! the pinned maps. The binary (`src/bin/dwcp.rs`) only parses arguments and calls these.

pub mod format;
pub mod maps;
pub mod tables;
pub mod when;
