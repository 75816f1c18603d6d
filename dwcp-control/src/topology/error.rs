//! Errors of the topology: each names the offending entry, and its config line when known.
use std::fmt;

use thiserror::Error;

/// Where an entry comes from: its description (`link "us-eu" (link_id 1)`) and config line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub what: String,
    /// 1-based line in the config text, when the entry was parsed from TOML.
    pub line: Option<usize>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// One problem found by validation.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum ValidationError {
    #[error("{entry}: duplicate {kind} {key:?} (first defined {first})")]
    Duplicate {
        entry: Entry,
        kind: &'static str,
        key: String,
        first: String,
    },
    #[error("{entry}: unknown region {region:?}")]
    UnknownRegion { entry: Entry, region: String },
    #[error("{entry}: both ends are region {region:?} (a link joins two different regions)")]
    SelfLoop { entry: Entry, region: String },
    #[error("{entry}: {field} = {value} is invalid: {rule}")]
    InvalidValue {
        entry: Entry,
        field: &'static str,
        value: String,
        rule: &'static str,
    },
}

impl ValidationError {
    pub fn entry(&self) -> &Entry {
        match self {
            ValidationError::Duplicate { entry, .. }
            | ValidationError::UnknownRegion { entry, .. }
            | ValidationError::SelfLoop { entry, .. }
            | ValidationError::InvalidValue { entry, .. } => entry,
        }
    }
}

/// Errors of loading or updating the topology. A refused update leaves the stored topology
/// as it was.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum TopologyError {
    #[error("topology config{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        line: Option<usize>,
        message: String,
    },
    #[error("invalid topology ({} problem{}):\n{}", errors.len(), if errors.len() == 1 { "" } else { "s" }, ValidationErrors(errors))]
    Invalid { errors: Vec<ValidationError> },
    #[error("update refers to unknown link_id {link_id}")]
    UnknownLink { link_id: u32 },
    #[error("update refers to unknown region {name:?}")]
    UnknownRegionName { name: String },
}

struct ValidationErrors<'a>(&'a [ValidationError]);

impl fmt::Display for ValidationErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line numbers of many offsets in one text: the newlines' offsets, found once (a topology of
/// a thousand entries named each entry's line by counting from the start, quadratic in the
/// file's size).
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn new(source: &str) -> Self {
        Lines(
            source
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// 1-based line of `offset`, as [`line_of`] counts it.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}
