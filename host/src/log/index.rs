//! The correlation index: for each sealed segment, a sidecar
//! `<segment>.cidx` mapping every correlation id in it to the sequence
//! numbers that carry it, written when the segment is sealed (temporary file,
//! then rename). A reader asked for one correlation id skips segments whose
//! index lacks it and, in the others, skips straight to its frames without
//! parsing the rest. The active segment has no sidecar yet: it is scanned.
//! A missing or unreadable sidecar only means a scan; it is never an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Extension of index files.
pub(crate) const INDEX_EXT: &str = "cidx";

/// The sidecar of `segment`.
pub(crate) fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension(INDEX_EXT)
}

/// Correlation id → sequence numbers, for one segment.
#[derive(Default)]
pub(crate) struct CorrelationIndex(BTreeMap<String, Vec<u64>>);

impl CorrelationIndex {
    pub fn add(&mut self, correlation: &str, seq: u64) {
        match self.0.get_mut(correlation) {
            Some(seqs) => seqs.push(seq),
            None => {
                self.0.insert(correlation.to_owned(), vec![seq]);
            }
        }
    }

    /// Writes the sidecar of `segment` (and empties this index).
    pub fn seal(&mut self, segment: &Path) -> std::io::Result<()> {
        let map = std::mem::take(&mut self.0);
        let text = serde_json::to_vec(&map).map_err(std::io::Error::other)?;
        let path = index_path(segment);
        let tmp = path.with_extension("cidx.tmp");
        std::fs::write(&tmp, text)?;
        crate::failpoint::hit("log.index.rename")?;
        std::fs::rename(&tmp, &path)
    }

    /// The sequence numbers of `correlation` in `segment`, from its sidecar;
    /// `None` when there is no usable sidecar (scan instead).
    pub fn lookup(segment: &Path, correlation: &str) -> Option<Vec<u64>> {
        let bytes = std::fs::read(index_path(segment)).ok()?;
        let mut map: BTreeMap<String, Vec<u64>> = match serde_json::from_slice(&bytes) {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(file = %index_path(segment).display(), error = %e, "unreadable correlation index; scanning instead");
                return None;
            }
        };
        Some(map.remove(correlation).unwrap_or_default())
    }
}
