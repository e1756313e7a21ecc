//! The request journal's store on NATS: a JetStream key-value bucket shared
//! by every host of a stream, so that an event redelivered to another host
//! (its first host died after the request but before its ack), or read by
//! `plugbus replay --nats`, gets the request's recorded outcome instead of
//! the request being sent again.
//!
//! The bucket holds bytes (the journal's own record encoding) under a
//! request's `Idempotency-Key` (32 hex digits). A value larger than the
//! server takes in one message (`max_payload`, 1 MiB by default; a response
//! body of the largest default grant is 1 MiB before base64) is split: parts
//! 1… go under `<key>.<n>` first, then the head under `<key>` (the part count
//! and part 0). A reader that finds the head finds every part, since they
//! were stored before it; a writer that died between them left parts without
//! a head, which no reader sees and the bucket's age limit removes.
//!
//! Kept for the stream's own `max_age` (a week by default): an event older
//! than that can no longer be redelivered or replayed, so its requests
//! cannot be asked for again. One value per key (history 1).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};

/// Bytes kept free in each message for the subject and protocol framing.
const FRAMING: usize = 1024;
/// The smallest part, whatever a server announces: below this, a record of
/// headers alone would need many round trips.
const MIN_PART: usize = 16 << 10;
/// Most parts one value may have: 4,096 × ~1 MiB bounds a record far above
/// the largest response body a grant allows (64 MiB), and a corrupt head
/// cannot make a reader loop for long.
const MAX_PARTS: u32 = 4096;

/// A journal bucket on one NATS server.
pub(crate) struct KvJournal {
    store: kv::Store,
    bucket: String,
    /// Largest part written, from the server's `max_payload`.
    part: usize,
}

impl KvJournal {
    /// Opens `bucket`, creating it (file storage, one value per key, values
    /// kept `max_age`) if needed.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn open(js: &jetstream::Context, bucket: &str, max_age: Duration) -> Result<KvJournal, String> {
        let spec = crate::kv_bucket::BucketSpec {
            description: "plugbus: the outcome of every request a plugin sent (the request journal)",
            history: 1,
            max_age,
            discard: jetstream::stream::DiscardPolicy::Old,
        };
        let store = crate::kv_bucket::open(js, bucket, spec).await?;
        Ok(KvJournal::of(js, store, bucket))
    }

    /// Opens `bucket` if it exists (a replay reads the live run's journal
    /// and never makes one): `None` when it does not.
    ///
    /// # Errors
    /// The server's answer, as text.
    pub async fn open_existing(js: &jetstream::Context, bucket: &str) -> Result<Option<KvJournal>, String> {
        match js.get_stream(format!("KV_{bucket}")).await {
            Ok(_) => {
                let store = js.get_key_value(bucket).await.map_err(|e| e.to_string())?;
                Ok(Some(KvJournal::of(js, store, bucket)))
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

    fn of(js: &jetstream::Context, store: kv::Store, bucket: &str) -> KvJournal {
        let max_payload = js.client().server_info().max_payload;
        KvJournal {
            store,
            bucket: bucket.to_owned(),
            part: max_payload.saturating_sub(FRAMING).max(MIN_PART),
        }
    }

    /// The bucket's name, for errors.
    pub fn bucket(&self) -> &str {
        &self.bucket
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
}
