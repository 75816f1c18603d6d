//! The `dwcp` command line: human-readable tables of what the API returns, and the decoder of
//! the pinned maps, and the API client. The binary (`src/main.rs`) only parses arguments and
//! calls these.

pub mod client;
pub mod format;
pub mod maps;
pub mod tables;
pub mod when;
