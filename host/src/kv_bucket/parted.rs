//! Values larger than one NATS message in a JetStream key-value bucket:
//! the request journal on NATS (`http::journal`) and the stream's dead
//! letters (`nats::dead_letters`) keep their records through it, so that a
//! record as large as the server allows an event to be still fits.
//!
//! A value larger than the server takes in one message (`max_payload`,
//! 1 MiB by default) is split: parts 1… go under `<key>.<n>` first, then the
//! head under `<key>` (the part count and part 0). A reader that finds the
//! head finds every part, since they were stored before it; a writer that
//! died between them left parts without a head, which no reader sees (and a
//! bucket's age limit, or the next write of the key, replaces). A key given
//! here never ends in `.<digits>` itself, so heads and parts never collide.

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};

/// Bytes kept free in each message for the subject and protocol framing.
const FRAMING: usize = 1024;
/// Most parts one value may have: 4,096 × ~1 MiB bounds a record far above
/// the largest response body a grant allows (64 MiB), and a corrupt head
/// cannot make a reader loop for long.
const MAX_PARTS: u32 = 4096;

/// A bucket of split values on one NATS server.
pub(crate) struct PartedBucket {
    store: kv::Store,
    bucket: String,
    /// Largest part written, from the server's `max_payload`.
    part: usize,
}

impl PartedBucket {
    /// Opens `bucket`, making it as `spec` says if it does not exist.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        spec: super::BucketSpec<'_>,
    ) -> Result<PartedBucket, String> {
        let store = super::open(js, bucket, spec).await?;
        Ok(PartedBucket::of(js, store, bucket))
    }

    /// Opens `bucket` if it exists (a reader that must never make one, such
    /// as a replay): `None` when it does not.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn open_existing(js: &jetstream::Context, bucket: &str) -> Result<Option<PartedBucket>, String> {
        match js.get_stream(format!("KV_{bucket}")).await {
            Ok(_) => {
                let store = js.get_key_value(bucket).await.map_err(|e| e.to_string())?;
                Ok(Some(PartedBucket::of(js, store, bucket)))
            }
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(e.to_string()),
            },
        }
    }

    fn of(js: &jetstream::Context, store: kv::Store, bucket: &str) -> PartedBucket {
        let max_payload = js.client().server_info().max_payload;
        PartedBucket {
            store,
            bucket: bucket.to_owned(),
            // Never above what the server takes; a server with a tiny
            // `max_payload` gets parts of half of it (more of them).
            part: max_payload.saturating_sub(FRAMING).max(max_payload / 2).max(64),
        }
    }

    /// The bucket's name, for errors.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The bucket itself, for small values that need no parts.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// The value stored under `key`, if its head is there.
    ///
    /// # Errors
    /// The server's answer, or what is wrong with the value, as text.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(head) = self.store.get(key).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (count, first) = head
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("value of `{key}` is {} bytes, shorter than its head", head.len()))?;
        let count = u32::from_le_bytes(*count);
        if count == 0 || count > MAX_PARTS {
            return Err(format!("value of `{key}` claims {count} parts"));
        }
        let mut value = first.to_vec();
        for n in 1..count {
            let part = self
                .store
                .get(format!("{key}.{n}"))
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("part {n} of {count} of `{key}` is missing"))?;
            value.extend_from_slice(&part);
        }
        Ok(Some(value))
    }

    /// Stores `value` under `key`, parts first, head last; returns once the
    /// server has stored each (a JetStream publish ack).
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        // The head's first part leaves room for the part count.
        let first_len = value.len().min(self.part - 4);
        let (first, rest) = value.split_at(first_len);
        let parts: Vec<&[u8]> = rest.chunks(self.part).collect();
        let count = u32::try_from(parts.len() + 1)
            .ok()
            .filter(|c| *c <= MAX_PARTS)
            .ok_or_else(|| format!("a record of {} bytes needs more than {MAX_PARTS} parts", value.len()))?;
        for (n, part) in parts.iter().enumerate() {
            self.store
                .put(format!("{key}.{}", n + 1), Bytes::copy_from_slice(part))
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut head = BytesMut::with_capacity(4 + first.len());
        head.put_u32_le(count);
        head.put_slice(first);
        self.store.put(key, head.freeze()).await.map_err(|e| e.to_string())?;
        Ok(())
    }
    /// Every key whose value has a head (parts are left out), in the
    /// bucket's order.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn keys(&self) -> Result<Vec<String>, String> {
        use futures_util::TryStreamExt;
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(keys.into_iter().filter(|k| !is_part(k)).collect())
    }

    /// Removes the value under `key`: its head first (readers no longer see
    /// it), then its parts. Nothing to remove is not an error.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn delete(&self, key: &str) -> Result<(), String> {
        let Some(head) = self.store.get(key).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let count = head
            .first_chunk::<4>()
            .map_or(1, |c| u32::from_le_bytes(*c))
            .clamp(1, MAX_PARTS);
        self.store.purge(key).await.map_err(|e| e.to_string())?;
        for n in 1..count {
            self.store
                .purge(format!("{key}.{n}"))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A part's key: `<key>.<n>`, `n` digits.
fn is_part(key: &str) -> bool {
    key.rsplit_once('.')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
