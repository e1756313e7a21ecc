//! Simulated power loss, for fault-injection tests (built with the
//! `failpoints` feature, and in unit tests).
//!
//! A killed process leaves the page cache to the kernel, which writes it
//! all back; a power loss does not. What reaches the disk of a file's
//! *unsynced suffix* (the bytes written after its last `fdatasync`) is then
//! up to the order of writeback: any mix, at page granularity, of the new
//! pages, the old ones (past the old end of an appended file: zeros) and
//! zero pages, and a file length anywhere from the synced one to the full
//! one. [`simulate`] rewrites a file into one such state, chosen by a seeded
//! generator ([`Rng`]), so that a failing seed replays exactly. The synced
//! prefix is never touched: that is what `fdatasync` promises.

use std::io;
use std::path::Path;

/// The page size of the model: Linux's page cache writes back 4 KiB pages.
pub const PAGE: u64 = 4096;

/// A small seeded generator (SplitMix64): deterministic, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// What [`simulate`] did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The file's length before.
    pub len_before: u64,
    /// Its length after (the synced length at least).
    pub len_after: u64,
    /// Pages (or the unsynced part of the page holding the synced end)
    /// zeroed within the new length.
    pub zeroed_pages: u64,
    /// Pages of the unsynced suffix kept as written.
    pub kept_pages: u64,
}

/// Rewrites `path` as a power loss may leave it when only its first
/// `synced_len` bytes were synced: the file is cut to the synced length, to
/// a page boundary past it or not at all, and each page of the unsynced
/// suffix that remains is kept or zeroed (for the page holding the synced
/// end, only its unsynced part is zeroed: its old content there was
/// nothing). A file no longer than `synced_len` is left as it is.
///
/// # Errors
/// I/O errors reading or writing the file.
pub fn simulate(path: &Path, synced_len: u64, rng: &mut Rng) -> io::Result<Outcome> {
    let mut bytes = std::fs::read(path)?;
    let len = bytes.len() as u64;
    let mut outcome = Outcome {
        len_before: len,
        len_after: len,
        ..Outcome::default()
    };
    if len <= synced_len {
        return Ok(outcome);
    }
    // The new length: the whole file a third of the time, else the synced
    // length or any page boundary between it and the end.
    let boundaries: Vec<u64> = std::iter::once(synced_len)
        .chain((synced_len / PAGE + 1..).map(|p| p * PAGE).take_while(|b| *b < len))
        .collect();
    let new_len = if rng.below(3) == 0 {
        len
    } else {
        boundaries[rng.below(boundaries.len() as u64) as usize]
    };
    bytes.truncate(new_len as usize);
    let mut start = synced_len;
    while start < new_len {
        let end = ((start / PAGE + 1) * PAGE).min(new_len);
        if rng.below(2) == 0 {
            bytes[start as usize..end as usize].fill(0);
            outcome.zeroed_pages += 1;
        } else {
            outcome.kept_pages += 1;
        }
        start = end;
    }
    outcome.len_after = new_len;
    std::fs::write(path, &bytes)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synced_prefix_is_kept_and_the_rest_is_pages_of_new_or_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..20_000u32).map(|i| (i % 251 + 1) as u8).collect();
        let synced = 5_000u64;
        let (mut cut, mut zeroed, mut kept) = (0, 0, 0);
        for seed in 0..200 {
            std::fs::write(&path, &original).unwrap();
            let outcome = simulate(&path, synced, &mut Rng::new(seed)).unwrap();
            let after = std::fs::read(&path).unwrap();
            assert_eq!(after.len() as u64, outcome.len_after);
            assert!(outcome.len_after >= synced);
            assert!(
                outcome.len_after == 20_000 || outcome.len_after == synced || outcome.len_after.is_multiple_of(PAGE)
            );
            assert_eq!(after[..synced as usize], original[..synced as usize], "seed {seed}");
            // Each page past the synced end is all new or all zero.
            let mut start = synced as usize;
            while start < after.len() {
                let end = ((start as u64 / PAGE + 1) * PAGE).min(after.len() as u64) as usize;
                let page = &after[start..end];
                assert!(
                    page == &original[start..end] || page.iter().all(|b| *b == 0),
                    "seed {seed}: page at {start} mixed"
                );
                start = end;
            }
            cut += usize::from(outcome.len_after < 20_000);
            zeroed += outcome.zeroed_pages;
            kept += outcome.kept_pages;
        }
        assert!(
            cut > 0 && zeroed > 0 && kept > 0,
            "every case is drawn: {cut} {zeroed} {kept}"
        );
        // A seed replays exactly.
        std::fs::write(&path, &original).unwrap();
        let a = simulate(&path, synced, &mut Rng::new(42)).unwrap();
        let a_bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &original).unwrap();
        assert_eq!(simulate(&path, synced, &mut Rng::new(42)).unwrap(), a);
        assert_eq!(std::fs::read(&path).unwrap(), a_bytes);
    }
}
