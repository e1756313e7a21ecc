//! A ring of the most recent items bounded in count and in bytes: what the
//! bus's history and the dashboard's tail keep of events that arrive from
//! outside, where a count alone bounds nothing.

use std::collections::VecDeque;

/// The newest items, each with its size, oldest first.
///
/// ```
/// use plugbus::ring::SizedRing;
///
/// let mut ring = SizedRing::default();
/// ring.push("a", 10, 2, 100);
/// ring.push("b", 10, 2, 100);
/// ring.push("c", 10, 2, 100); // past two items: "a" goes
/// assert_eq!(ring.iter().collect::<Vec<_>>(), [&"b", &"c"]);
/// ```
#[derive(Debug)]
pub struct SizedRing<T> {
    items: VecDeque<(T, usize)>,
    /// The items' total size; wider than a size, so that no sum of sizes
    /// overflows it (absurd sizes are still counted exactly).
    bytes: u128,
}

impl<T> Default for SizedRing<T> {
    fn default() -> Self {
        SizedRing::with_capacity(0)
    }
}

impl<T> SizedRing<T> {
    /// An empty ring with room for `reserve` items before it grows.
    pub fn with_capacity(reserve: usize) -> Self {
        SizedRing {
            items: VecDeque::with_capacity(reserve),
            bytes: 0,
        }
    }

    /// Keeps `item` (of `size` bytes) as the newest, dropping the oldest
    /// past `capacity` items or `max_bytes`; the newest is kept whatever
    /// its size.
    pub fn push(&mut self, item: T, size: usize, capacity: usize, max_bytes: usize) {
        while !self.items.is_empty() && (self.items.len() >= capacity || self.bytes + size as u128 > max_bytes as u128)
        {
            if let Some((_, gone)) = self.items.pop_front() {
                self.bytes -= gone as u128;
            }
        }
        self.items.push_back((item, size));
        self.bytes += size as u128;
    }

    /// How many items are kept.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items, oldest first (reversible: newest first).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter().map(|(item, _)| item)
    }

    /// The newest item.
    pub fn newest(&self) -> Option<&T> {
        self.items.back().map(|(item, _)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_the_count_and_the_bytes() {
        let mut ring = SizedRing::default();
        for i in 0..5 {
            ring.push(i, 10, 3, usize::MAX);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        for i in 5..10 {
            ring.push(i, 10, 100, 25);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [8, 9], "two fit in 25 bytes");
        ring.push(10, 1000, 100, 25);
        assert_eq!(
            (ring.len(), ring.newest()),
            (1, Some(&10)),
            "the newest whatever its size"
        );
        ring.push(11, 10, 100, 25);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [11], "its bytes went with it");
    }

    #[test]
    fn sizes_past_the_address_space_do_not_overflow() {
        let mut ring = SizedRing::default();
        ring.push(1, usize::MAX, 10, usize::MAX);
        ring.push(2, usize::MAX, 10, usize::MAX);
        ring.push(3, 5, 10, 100);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [3]);
    }
}
