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
//! Keys are `<plugin>/<digest>`: the plugin's name with each `.` written
//! `=` (a key's `.` separates subject tokens, and a name such as `a..b`
//! would make an empty one; names never hold `=` or `/`, so the mapping is
//! one to one and a plugin's letters are the keys that start with
//! `<plugin>/`), and the first 16 bytes of the SHA-256 of the event id in
//! hex: a letter is keyed by (plugin, event), so the same event ended twice
//! (two hosts, a redrive that fails again) is one letter. Values are a
//! [`DeadLetter`] as JSON, split into parts when larger than one message
//! (`kv_bucket::parted`). Letters are kept until a redrive handles them (no
//! age limit): like the log's dead-letter journal, they are the record of
//! what a plugin never handled.
//!
//! A redrive claims each letter before sending it (`<key>.claim`, created
//! only if absent, holding when the claim lapses), so redrives on two hosts
//! never both send one; a claim whose redrive died lapses after
//! [`CLAIM_LEASE`]. A live redrive renews its claims while it holds them
//! (every third of the lease), so a slow one never sees a letter it is
//! still handling taken by another; a claim is renewed and released only
//! at the revision it holds, never another redrive's.

use async_nats::jetstream;

use crate::dead_letter::DeadLetter;
use crate::kv_bucket::parted::PartedBucket;

/// The key-value bucket holding the dead letters of `stream`.
pub fn dead_letter_bucket(stream: &str) -> String {
    format!("{stream}_DEAD_LETTERS")
}

/// How long a redrive's claim on a letter holds unless renewed: the time a
/// claim left by a redrive that died (its host killed, frozen) keeps other
/// redrives from the letter. A live redrive renews it every third of this,
/// however long its letters take (a chunk of 64, each bounded by the
/// plugin's deadline and I/O budget and its follow-ups' store); ten
/// minutes leaves room for a host frozen in a pause between renewals.
pub const CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// The claim lease in force: [`CLAIM_LEASE`], or in a build with failpoints
/// the milliseconds of `nats.dead_letter.claim_lease=return(MS)` (tests
/// shorten it to see a slow redrive outlive an unrenewed lease).
pub fn claim_lease() -> std::time::Duration {
    crate::failpoint::value("nats.dead_letter.claim_lease")
        .and_then(|ms| ms.parse().ok())
        .map_or(CLAIM_LEASE, std::time::Duration::from_millis)
}

/// A claim's value: the wall-clock time (ns) until which it holds, a lease
/// from `now`.
fn lease_from(now: u64) -> bytes::Bytes {
    let until = now.saturating_add(u64::try_from(claim_lease().as_nanos()).unwrap_or(u64::MAX));
    bytes::Bytes::from(until.to_string())
}

/// The key prefix of `plugin`'s letters.
fn prefix(plugin: &str) -> String {
    format!("{}/", plugin.replace('.', "="))
}

/// The key of `plugin`'s letter for the event `event_id`.
fn key(plugin: &str, event_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(event_id.as_bytes());
    format!("{}{}", prefix(plugin), crate::text::hex(&digest[..16]))
}

/// The suffix of a claim's key.
const CLAIM: &str = ".claim";

/// A redrive's hold on one letter, released once its outcome is settled.
pub(crate) struct Claim {
    key: String,
    /// The claim's revision in the bucket: renewals and the release expect
    /// it, so a claim that lapsed and was taken by another redrive is
    /// neither extended nor removed by this one.
    revision: u64,
}

impl Claim {
    /// The claim's key in the bucket (`<letter's key>.claim`).
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
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
        let key = key(&letter.plugin, &letter.event.id);
        let err = |e: String| format!("bucket `{}`, key `{key}`: {e}", self.name());
        let json = serde_json::to_vec(letter).map_err(|e| err(e.to_string()))?;
        self.values
            .put(&key, &json)
            .await
            .map_err(|e| err(format!("{e} (a letter of {} bytes)", json.len())))
    }

    /// Whether `plugin` has, or had, a letter for `event_id`: a letter, or
    /// the marker a redrive's removal left (so a late keeper never brings
    /// back a letter a redrive already handled).
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn recorded(&self, plugin: &str, event_id: &str) -> Result<bool, String> {
        let entry = self
            .values
            .store()
            .entry(key(plugin, event_id))
            .await
            .map_err(|e| format!("bucket `{}`: {e}", self.name()))?;
        Ok(entry.is_some())
    }

    /// Claims `plugin`'s letter for `event_id` for this redrive: `None` when
    /// another redrive holds it (a claim not yet lapsed).
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn claim(&self, plugin: &str, event_id: &str) -> Result<Option<Claim>, String> {
        use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
        let store = self.values.store();
        let claim = format!("{}{CLAIM}", key(plugin, event_id));
        let now = crate::event::now_nanos();
        let value = lease_from(now);
        let err = |e: &dyn std::fmt::Display| format!("bucket `{}`, key `{claim}`: {e}", self.name());
        let revision = match store.create(&claim, value.clone()).await {
            Ok(revision) => Some(revision),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                // Held: taken over only once lapsed, and only if nobody else did.
                match store.entry(claim.clone()).await.map_err(|e| err(&e))? {
                    None => None,
                    Some(held) => {
                        let lapsed = held.operation != Operation::Put
                            || std::str::from_utf8(&held.value)
                                .ok()
                                .and_then(|t| t.parse::<u64>().ok())
                                .is_none_or(|t| t <= now);
                        if lapsed {
                            match store.update(&claim, value, held.revision).await {
                                Ok(revision) => Some(revision),
                                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                                Err(e) => return Err(err(&e)),
                            }
                        } else {
                            None
                        }
                    }
                }
            }
            Err(e) => return Err(err(&e)),
        };
        let Some(revision) = revision else {
            return Ok(None);
        };
        // A redrive that held it before may have handled and removed it
        // since this one listed it: still a letter, or not to be sent.
        let still = store.get(key(plugin, event_id)).await.map_err(|e| err(&e));
        let claim = Claim { key: claim, revision };
        match still {
            Ok(Some(_)) => Ok(Some(claim)),
            Ok(None) => {
                self.release(claim).await;
                Ok(None)
            }
            Err(reason) => {
                self.release(claim).await;
                Err(reason)
            }
        }
    }

    /// Extends a claim this redrive holds by a lease from now. `Ok(false)`:
    /// the claim is no longer this redrive's (it lapsed, its host frozen
    /// past the lease, and another redrive took it).
    ///
    /// # Errors
    /// The server's answer, as text (the claim may still hold: renew again).
    pub async fn renew(&self, claim: &mut Claim) -> Result<bool, String> {
        use async_nats::jetstream::kv::UpdateErrorKind;
        let value = lease_from(crate::event::now_nanos());
        match self.values.store().update(&claim.key, value, claim.revision).await {
            Ok(revision) => {
                claim.revision = revision;
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(format!("bucket `{}`, key `{}`: {e}", self.name(), claim.key)),
        }
    }

    /// Releases a claim (its letter handled and removed, or kept), unless
    /// it is no longer this redrive's.
    pub async fn release(&self, claim: Claim) {
        if let Err(e) = self
            .values
            .store()
            .purge_expect_revision(&claim.key, Some(claim.revision))
            .await
        {
            tracing::warn!(bucket = self.name(), key = %claim.key, error = %e, "cannot release a redrive's claim on a dead letter (taken by another redrive, or the server's answer lost); it lapses on its own");
        }
    }

    /// Every letter (of `plugin` only, when given), oldest first. A value
    /// that does not parse is skipped with an error in the log naming its
    /// key, never the whole list.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn list(&self, plugin: Option<&str>) -> Result<Vec<DeadLetter>, String> {
        let prefix = plugin.map(prefix);
        let mut letters = Vec::new();
        let keys = self
            .values
            .keys()
            .await
            .map_err(|e| format!("bucket `{}`: {e}", self.name()))?;
        for k in keys {
            if k.ends_with(CLAIM) || prefix.as_deref().is_some_and(|p| !k.starts_with(p)) {
                continue;
            }
            // Removed between the listing and the read: not a letter any
            // more. One that cannot be read is named and skipped, never the
            // whole list.
            let bytes = match self.values.get(&k).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(bucket = self.name(), key = %k, error = %e, "a dead letter that cannot be read; skipped");
                    continue;
                }
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
        let key = key(plugin, event_id);
        self.values
            .delete(&key)
            .await
            .map_err(|e| format!("bucket `{}`, key `{key}`: {e}", self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_plugin_and_event_and_never_look_like_parts() {
        let a = key("cost.tracker", "evt-1");
        assert!(a.starts_with("cost=tracker/"), "{a}");
        assert_eq!(a, key("cost.tracker", "evt-1"), "stable");
        assert_ne!(a, key("cost.tracker", "evt-2"));
        assert_ne!(a, key("cost", "evt-1"));
        assert_ne!(a, key("cost_tracker", "evt-1"));
        // Every legal name (letters, digits, `-`, `_`, `.`) makes a key the
        // server takes: no empty token, whatever the dots.
        for name in ["a..b", ".a", "a.", "A-b_c.9", "..."] {
            let k = key(name, "e");
            assert!(
                k.split('.').all(|token| !token.is_empty())
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{name}: {k}"
            );
            assert!(k.starts_with(&prefix(name)));
        }
        assert_ne!(prefix("a.b"), prefix("a_b"));
        // 32 hex digits after the slash: never `.<digits>` at the end.
        let digest = a.rsplit_once('/').unwrap().1;
        assert_eq!(digest.len(), 32);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
