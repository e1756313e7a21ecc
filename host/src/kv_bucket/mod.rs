//! JetStream key-value buckets, opened and made if needed the way the
//! key-value API lays them out: the fleet's plugin set (`fleet`), the
//! request journal on NATS (`http::journal`) and the stream's dead letters
//! (`nats::dead_letters`) each keep one.
//!
//! - `parted`: values larger than one message, split into parts.
//!
//! The bucket's stream (`KV_<bucket>`) is made here rather than by
//! async-nats's `create_key_value`, which first asks for the account's
//! limits in a form Debian's nats-server 2.9 does not answer in.

pub(crate) mod parted;

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::DiscardPolicy};

/// How a bucket keeps its values.
pub(crate) struct BucketSpec<'a> {
    /// Said in the stream's description (`nats stream info`).
    pub description: &'a str,
    /// Values kept per key.
    pub history: i64,
    /// How long a value is kept (zero: for ever).
    pub max_age: Duration,
    /// What a full bucket does with a new value.
    pub discard: DiscardPolicy,
}

/// Opens `bucket`, making its stream as `spec` says if it does not exist
/// (an existing bucket is used as it is).
///
/// # Errors
/// The server's answer, as text.
pub(crate) async fn open(js: &jetstream::Context, bucket: &str, spec: BucketSpec<'_>) -> Result<kv::Store, String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(spec.description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: spec.history,
        max_age: spec.max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: spec.discard,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}
