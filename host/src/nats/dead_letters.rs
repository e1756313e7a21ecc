//! The stream's dead letters on NATS: a JetStream key-value bucket
//! (`<stream>_DEAD_LETTERS`) shared by every host of the stream, so a
//! poison event a host ends (`Term`) or the server gives up
//! (`max_deliver`) is kept where every host, `plugbus dlq list --nats` and
//! a redrive find it, and survives the process that met it.
//!
//! A letter is stored (the server's publish ack) *before* its message is
//! ended: a host that cannot store it does not end the message (`Nak`), so
//! the event comes back rather than disappearing with no record.
//!
//! Keys are `<plugin>/<digest>`, the digest the first 16 bytes of the
//! SHA-256 of the event id in hex: a letter is keyed by (plugin, event), so
//! the same event ended twice (two hosts, a redrive that fails again) is one
//! letter. Plugin names never hold `/`, so a plugin's letters are the keys
//! that start with `<plugin>/`. Values are a [`DeadLetter`] as JSON, split
//! into parts when larger than one message (`kv_bucket::parted`). Letters
//! are kept until a redrive handles them (no age limit): like the log's
//! dead-letter journal, they are the record of what a plugin never handled.

use async_nats::jetstream;

use crate::dead_letter::DeadLetter;
use crate::kv_bucket::parted::PartedBucket;

/// The key-value bucket holding the dead letters of `stream`.
pub fn dead_letter_bucket(stream: &str) -> String {
    format!("{stream}_DEAD_LETTERS")
}

/// The key of `plugin`'s letter for the event `event_id`.
fn key(plugin: &str, event_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(event_id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{plugin}/{hex}")
}

/// The dead letters of one stream.
pub(crate) struct LetterBucket {
    values: PartedBucket,
}

impl LetterBucket {
    /// Opens the bucket of `stream`, making it if needed.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn open(js: &jetstream::Context, stream: &str) -> Result<LetterBucket, String> {
        let spec = crate::kv_bucket::BucketSpec {
            description: "plugbus: events a plugin never handled (dead letters), until a redrive handles them",
            history: 1,
            max_age: std::time::Duration::ZERO,
            discard: jetstream::stream::DiscardPolicy::Old,
        };
        let values = PartedBucket::open(js, &dead_letter_bucket(stream), spec).await?;
        Ok(LetterBucket { values })
    }

    /// Opens the bucket of `stream` if it exists (`plugbus dlq list` never
    /// makes one): `None` when no host of the stream ever made it.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn open_existing(js: &jetstream::Context, stream: &str) -> Result<Option<LetterBucket>, String> {
        Ok(PartedBucket::open_existing(js, &dead_letter_bucket(stream))
            .await?
            .map(|values| LetterBucket { values }))
    }

    /// The bucket's name, for errors.
    pub fn name(&self) -> &str {
        self.values.bucket()
    }

    /// Stores `letter`, replacing one for the same plugin and event;
    /// returns once the server has it.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn keep(&self, letter: &DeadLetter) -> Result<(), String> {
        let json = serde_json::to_vec(letter).map_err(|e| e.to_string())?;
        crate::failpoint::hit("nats.dead_letter.keep").map_err(|e| e.to_string())?;
        self.values.put(&key(&letter.plugin, &letter.event.id), &json).await
    }

    /// Whether `plugin` has a letter for `event_id`.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn contains(&self, plugin: &str, event_id: &str) -> Result<bool, String> {
        Ok(self.values.get(&key(plugin, event_id)).await?.is_some())
    }

    /// Every letter (of `plugin` only, when given), oldest first. A value
    /// that does not parse is skipped with an error in the log naming its
    /// key, never the whole list.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn list(&self, plugin: Option<&str>) -> Result<Vec<DeadLetter>, String> {
        let prefix = plugin.map(|p| format!("{p}/"));
        let mut letters = Vec::new();
        for k in self.values.keys().await? {
            if prefix.as_deref().is_some_and(|p| !k.starts_with(p)) {
                continue;
            }
            // Removed between the listing and the read: not a letter any more.
            let Some(bytes) = self.values.get(&k).await? else {
                continue;
            };
            match serde_json::from_slice::<DeadLetter>(&bytes) {
                Ok(letter) => letters.push(letter),
                Err(e) => {
                    tracing::error!(bucket = self.name(), key = %k, error = %e, "a dead letter that does not parse; skipped")
                }
            }
        }
        letters.sort_by_key(|l| (l.failed_at_unix_nanos, l.event.seq));
        Ok(letters)
    }

    /// Removes `plugin`'s letter for `event_id` (handled by a redrive).
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn remove(&self, plugin: &str, event_id: &str) -> Result<(), String> {
        self.values.delete(&key(plugin, event_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_plugin_and_event_and_never_look_like_parts() {
        let a = key("cost.tracker", "evt-1");
        assert!(a.starts_with("cost.tracker/"), "{a}");
        assert_eq!(a, key("cost.tracker", "evt-1"), "stable");
        assert_ne!(a, key("cost.tracker", "evt-2"));
        assert_ne!(a, key("cost", "evt-1"));
        // 32 hex digits after the slash: never `.<digits>` at the end.
        let digest = a.rsplit_once('/').unwrap().1;
        assert_eq!(digest.len(), 32);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
