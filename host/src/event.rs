//! The event type carried on the bus.
//!
//! An [`Event`] is an immutable, cheaply clonable handle (`Arc` inside): the
//! same event goes to every handler and every plugin queue without copying.
//! Its payload is serialised to JSON text at most once, the first time a
//! plugin needs it, and that text is shared by all plugins. An event that
//! arrives as text (from a NATS stream) keeps that text for its plugins and
//! parses the payload only if something asks for the value.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;
use serde_json::Value;

/// `source` of events emitted by the embedding application.
pub const HOST_SOURCE: &str = "host";

/// One event on the bus.
///
/// ```
/// use serde_json::json;
/// let ev = plugbus::Event::new("tool.called", json!({ "tool": "search" }))
///     .with_correlation_id("run-7");
/// assert_eq!(ev.name(), "tool.called");
/// assert_eq!(ev.correlation_id(), Some("run-7"));
/// assert_eq!(ev.source(), "host");
/// assert_eq!(ev.payload()["tool"], "search");
/// ```
#[derive(Clone)]
pub struct Event(Arc<EventData>);

struct EventData {
    name: String,
    id: String,
    time_unix_nanos: u64,
    correlation_id: Option<String>,
    source: String,
    /// The payload. Set at construction, except for an event decoded from
    /// text: then `text` holds it (checked as JSON when it was read)
    /// and the value is parsed from it on first use.
    payload: OnceLock<Value>,
    /// How many plugin emits led here: 0 for the embedder's events.
    depth: u8,
    /// Position in publish order (the log's sequence number when the bus
    /// has a log); 0 until published. Set once, by the bus, under its
    /// publish lock.
    seq: AtomicU64,
    /// The payload as JSON text, written once on first use (or the text
    /// the event was decoded from): what every plugin is handed.
    text: OnceLock<String>,
}

impl Clone for EventData {
    fn clone(&self) -> Self {
        EventData {
            name: self.name.clone(),
            id: self.id.clone(),
            time_unix_nanos: self.time_unix_nanos,
            correlation_id: self.correlation_id.clone(),
            source: self.source.clone(),
            payload: self.payload.clone(),
            depth: self.depth,
            // A copy is a new event: it gets its own place when published.
            seq: AtomicU64::new(0),
            text: self.text.clone(),
        }
    }
}

impl EventData {
    fn payload(&self) -> &Value {
        self.payload.get_or_init(|| {
            // Unset only for an event decoded from text, whose `text` was
            // set with that text, already checked as JSON.
            self.text
                .get()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or(Value::Null)
        })
    }
}

/// Longest correlation id taken from outside (`POST /events`, JSON Lines,
/// CloudEvents): run ids, conversation ids and UUIDs are far shorter, and
/// every event of a run carries its id (the dashboard shows it in each row).
pub const MAX_CORRELATION_ID_BYTES: usize = 256;

/// Deepest nesting of arrays and objects in a payload that plugbus takes
/// from an embedder or a plugin. Everything that reads events back parses
/// them with serde_json's default recursion limit (128 levels): a log
/// frame, a NATS message and `POST /events` wrap the payload in one object,
/// so 126 levels inside it are what every reader reads back (and what a
/// plugin's own serde_json parses). The Python binding and a plugin's
/// `emit` refuse deeper payloads; text from outside is parsed under the
/// limit already.
pub const MAX_PAYLOAD_DEPTH: usize = 126;

/// Whether `value` nests arrays and objects deeper than `max` levels (a
/// scalar is 0, `[1]` is 1). Walks no deeper than `max + 1`.
///
/// ```
/// use plugbus::event::nested_deeper_than;
/// assert!(!nested_deeper_than(&serde_json::json!({"a": [1]}), 2));
/// assert!(nested_deeper_than(&serde_json::json!({"a": [[1]]}), 2));
/// ```
pub fn nested_deeper_than(value: &Value, max: usize) -> bool {
    match value {
        Value::Array(items) => max == 0 || items.iter().any(|v| nested_deeper_than(v, max - 1)),
        Value::Object(map) => max == 0 || map.values().any(|v| nested_deeper_than(v, max - 1)),
        _ => false,
    }
}

/// Longest event id taken from outside (a CloudEvent's `id`, a message on
/// the NATS stream), in bytes: the ids plugbus makes are UUIDs (36 bytes),
/// and this bounds what one event makes the host keep, log and journal.
pub const MAX_ID_BYTES: usize = 256;

/// Checks an id taken from outside (an event id, a correlation id): 1 to
/// `max` bytes, no control characters (a line break in an id breaks the
/// text formats it is written into: server-sent events, logs, JSON Lines
/// tools).
///
/// # Errors
/// What is wrong with it.
///
/// ```
/// assert!(plugbus::check_external_id("run-1", 256).is_ok());
/// assert!(plugbus::check_external_id("a\nb", 256).is_err());
/// assert!(plugbus::check_external_id("", 256).is_err());
/// ```
pub fn check_external_id(id: &str, max: usize) -> Result<(), String> {
    if id.is_empty() || id.len() > max {
        return Err(format!("must be 1 to {max} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters (line breaks, NUL)".into());
    }
    Ok(())
}

/// Roughly how much memory a JSON value takes (its nodes, strings and
/// object entries), walked without recursion.
fn value_bytes(value: &Value) -> usize {
    /// A `Value` node, and an object entry's bookkeeping.
    const NODE: usize = 32;
    const ENTRY: usize = 48;
    let mut total = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += NODE;
        match v {
            Value::String(s) => total += s.len(),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (key, item) in map {
                    total += ENTRY + key.len();
                    stack.push(item);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

/// The current time in nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

impl Event {
    /// A new event from the host with a fresh id (UUIDv7: unique and
    /// time-ordered) and the current time.
    pub fn new(name: impl Into<String>, payload: Value) -> Event {
        Event(Arc::new(EventData {
            name: name.into(),
            id: uuid::Uuid::now_v7().to_string(),
            time_unix_nanos: now_nanos(),
            correlation_id: None,
            source: HOST_SOURCE.to_owned(),
            payload: OnceLock::from(payload),
            depth: 0,
            seq: AtomicU64::new(0),
            text: OnceLock::new(),
        }))
    }

    /// An event from outside plugbus (a CloudEvent) with its own id, source
    /// and time (now when `None`).
    pub(crate) fn external(
        name: &str,
        id: &str,
        source: &str,
        time_unix_nanos: Option<u64>,
        correlation_id: Option<String>,
        payload: Value,
    ) -> Event {
        Event(Arc::new(EventData {
            name: name.to_owned(),
            id: id.to_owned(),
            time_unix_nanos: time_unix_nanos.unwrap_or_else(now_nanos),
            correlation_id,
            source: source.to_owned(),
            payload: OnceLock::from(payload),
            depth: 0,
            seq: AtomicU64::new(0),
            text: OnceLock::new(),
        }))
    }

    /// An event read back from the log, with its original fields and place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore(
        seq: u64,
        name: String,
        id: String,
        time_unix_nanos: u64,
        correlation_id: Option<String>,
        source: String,
        depth: u8,
        payload: Value,
    ) -> Event {
        Event(Arc::new(EventData {
            name,
            id,
            time_unix_nanos,
            correlation_id,
            source,
            payload: OnceLock::from(payload),
            depth,
            seq: AtomicU64::new(seq),
            text: OnceLock::new(),
        }))
    }

    /// An event read from text (a NATS message, a log frame) at `seq`, or
    /// written as text (an OTLP span's mapping, `seq` 0: not yet published),
    /// whose payload is `payload_json`, valid JSON: plugins get that text as
    /// it is, and the value is parsed only if asked for.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decoded(
        seq: u64,
        name: String,
        id: String,
        time_unix_nanos: u64,
        correlation_id: Option<String>,
        source: String,
        depth: u8,
        payload_json: String,
    ) -> Event {
        Event(Arc::new(EventData {
            name,
            id,
            time_unix_nanos,
            correlation_id,
            source,
            payload: OnceLock::new(),
            depth,
            seq: AtomicU64::new(seq),
            text: OnceLock::from(payload_json),
        }))
    }

    /// Its position in the bus's publish order: the event log's sequence
    /// number when the bus has a log (continuing across restarts), else a
    /// count from 1 per bus. `None` until the event is published.
    ///
    /// ```
    /// # async fn demo() -> Result<(), plugbus::Error> {
    /// let bus = plugbus::Bus::builder().build().await?;
    /// let first = bus.emit("a", serde_json::Value::Null);
    /// let second = bus.emit("b", serde_json::Value::Null);
    /// assert_eq!((first.seq(), second.seq()), (Some(1), Some(2)));
    /// # Ok(()) }
    /// ```
    pub fn seq(&self) -> Option<u64> {
        match self.0.seq.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// Numbers the event; the bus calls this once, under its publish lock.
    pub(crate) fn set_seq(&self, seq: u64) {
        self.0.seq.store(seq, Ordering::Release);
    }

    /// This event ready to be published: itself, or a copy when it was
    /// published before (each publish is its own place in the order).
    pub(crate) fn unpublished(self) -> Event {
        if self.0.seq.load(Ordering::Acquire) == 0 {
            self
        } else {
            Event(Arc::new(EventData::clone(&self.0)))
        }
    }

    /// Sets the correlation id that ties this event to an agent run or request.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Event {
        let data = Arc::make_mut(&mut self.0);
        // The payload's text does not depend on it: kept.
        data.correlation_id = Some(id.into());
        self
    }

    /// A follow-up event emitted by plugin `source` while it handled
    /// `parent`, as its `index`-th emit. It inherits the parent's
    /// correlation id, or, when the parent has none, takes the parent's id as
    /// its correlation id so the chain stays linked.
    ///
    /// Its id and time derive from (parent id, plugin, index) alone, never
    /// from the clock: replaying the parent into the same plugin yields the
    /// very same follow-up, which downstream consumers can de-duplicate. The
    /// id is a UUIDv7 whose timestamp is the parent's and whose other bits
    /// are a SHA-256 of the three; the time is the parent's plus `index + 1`
    /// nanoseconds, so siblings keep their emit order.
    pub(crate) fn follow_up(parent: &Event, source: &str, index: u32, name: String, payload: Value) -> Event {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"plugbus-follow-up\0");
        h.update(parent.id().as_bytes());
        h.update([0]);
        h.update(source.as_bytes());
        h.update([0]);
        h.update(index.to_le_bytes());
        let digest = h.finalize();
        let mut rand = [0u8; 10];
        rand.copy_from_slice(&digest[..10]);
        let millis = parent.time_unix_nanos() / 1_000_000;
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &rand).into_uuid();
        Event(Arc::new(EventData {
            name,
            id: id.to_string(),
            time_unix_nanos: parent.time_unix_nanos().saturating_add(u64::from(index) + 1),
            correlation_id: Some(parent.correlation_id().unwrap_or(parent.id()).to_owned()),
            source: source.to_owned(),
            payload: OnceLock::from(payload),
            depth: parent.0.depth.saturating_add(1),
            seq: AtomicU64::new(0),
            text: OnceLock::new(),
        }))
    }

    /// The dot-separated event name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Unique, time-ordered id (UUIDv7 text).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Creation time in nanoseconds since the Unix epoch.
    pub fn time_unix_nanos(&self) -> u64 {
        self.0.time_unix_nanos
    }

    /// Creation time.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0.time_unix_nanos)
    }

    /// The correlation id, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.0.correlation_id.as_deref()
    }

    /// `"host"`, or the name of the plugin that emitted this event.
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// Roughly how much memory the event holds: its strings, and its
    /// payload's text and value as far as they were made. What the buffers
    /// that keep recent events (the bus's history, the dashboard's tail)
    /// bound themselves by: a 1 MiB payload of small numbers takes ~18 MiB
    /// once parsed.
    ///
    /// ```
    /// let small = plugbus::Event::new("a", serde_json::json!({"n": 1}));
    /// let big = plugbus::Event::new("a", serde_json::json!(vec![0; 100_000]));
    /// assert!(big.approx_bytes() > 3_000_000 && small.approx_bytes() < 1_000);
    /// ```
    pub fn approx_bytes(&self) -> usize {
        let d = &self.0;
        let strings = d.name.len() + d.id.len() + d.source.len() + d.correlation_id.as_ref().map_or(0, String::len);
        std::mem::size_of::<EventData>()
            + strings
            + d.text.get().map_or(0, String::len)
            + d.payload.get().map_or(0, value_bytes)
    }

    /// The JSON payload.
    pub fn payload(&self) -> &Value {
        self.0.payload()
    }

    /// The payload for JSON output (`serde_json`): its text as it is when it
    /// has one on a single line, so an event read or mapped as text (a log
    /// frame, a NATS message, an OTLP span) is written without being
    /// parsed, and keeps no parsed value (~18× its text, for numbers) in
    /// the buffers that hold it; else its value, written compact.
    ///
    /// ```
    /// let event = plugbus::Event::new("a", serde_json::json!({"n": [1, 2]}));
    /// assert_eq!(serde_json::to_string(&event.payload_out()).unwrap(), r#"{"n":[1,2]}"#);
    /// ```
    pub fn payload_out(&self) -> PayloadOut<'_> {
        PayloadOut(&self.0)
    }

    /// The payload as JSON text: serialised once, on first use, and the very
    /// text every plugin receives.
    pub fn payload_json(&self) -> &str {
        self.0.text.get_or_init(|| json_text(self.0.payload()))
    }

    /// The payload's JSON text if it exists already (an event read or
    /// mapped from text, or one whose text was asked for), without
    /// serialising or parsing anything.
    pub(crate) fn payload_json_if_written(&self) -> Option<&str> {
        self.0.text.get().map(String::as_str)
    }

    /// How many plugin emits led to this event (0 for the embedder's own).
    pub fn depth(&self) -> u8 {
        self.0.depth
    }

    /// The record given to plugins: borrowed from the event, so nothing is
    /// copied until it is lowered into a guest's memory; the payload's text
    /// is written on first use and the same text serves every plugin.
    pub(crate) fn wire(&self) -> WireEvent<'_> {
        WireEvent(WireRecord {
            name: &self.0.name,
            id: &self.0.id,
            time_unix_nanos: self.0.time_unix_nanos,
            correlation_id: self.0.correlation_id.as_deref(),
            source: &self.0.source,
            payload: self.payload_json(),
        })
    }
}

/// The WIT `event` record (`plugbus:observer/types`), lowered straight from
/// an [`Event`]'s fields: the bindings' own record type owns its strings,
/// which would copy each of them once per event before the copy into the
/// guest. Checked against the plugin's export when an instance is built.
///
/// Its lowering into a guest's memory (every event of an `on-events` batch
/// goes that way) asks the guest for the five strings' room first and then
/// writes the strings and the record through one view of the memory:
/// wasmtime's generic path looks the memory up again for every field and
/// string (~20 lookups per event, ~9% of a batched plugin's thread in a
/// profile of `plugbus replay`). The guest sees the same calls to its
/// `realloc`, in the same order, and the same bytes.
#[derive(Clone, Copy)]
pub(crate) struct WireEvent<'a>(WireRecord<'a>);

/// The record's fields, with wasmtime's derived type check and lowering
/// (used for the flat form and for a guest that wants strings as UTF-16).
#[derive(Clone, Copy, wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub(crate) struct WireRecord<'a> {
    name: &'a str,
    id: &'a str,
    #[component(name = "time-unix-nanos")]
    time_unix_nanos: u64,
    #[component(name = "correlation-id")]
    correlation_id: Option<&'a str>,
    source: &'a str,
    payload: &'a str,
}

mod wire {
    use std::mem::MaybeUninit;

    use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
    use wasmtime::component::__internal::{
        CanonicalAbiInfo, ComponentVariant, InstanceType, InterfaceType, LowerContext,
    };
    use wasmtime::component::{ComponentType, Lower};

    use super::{WireEvent, WireRecord};

    /// The canonical ABI's cap on a string's length in bytes.
    const MAX_STRING: usize = (1 << 31) - 1;

    // SAFETY: the same type (`Lower`, ABI, type check) as the derived
    // record it wraps; `linear_lower_to_memory` writes exactly the bytes the
    // derived lowering writes, inside the record's `SIZE32` bytes at
    // `offset` and the strings' own allocations.
    unsafe impl<'a> ComponentType for WireEvent<'a> {
        type Lower = <WireRecord<'a> as ComponentType>::Lower;
        const ABI: CanonicalAbiInfo = <WireRecord<'a> as ComponentType>::ABI;

        fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
            <WireRecord<'a> as ComponentType>::typecheck(ty, types)
        }
    }

    // SAFETY: see `ComponentType` above.
    unsafe impl Lower for WireEvent<'_> {
        fn linear_lower_to_flat<T>(
            &self,
            cx: &mut LowerContext<'_, T>,
            ty: InterfaceType,
            dst: &mut MaybeUninit<Self::Lower>,
        ) -> wasmtime::Result<()> {
            self.0.linear_lower_to_flat(cx, ty, dst)
        }

        fn linear_lower_to_memory<T>(
            &self,
            cx: &mut LowerContext<'_, T>,
            ty: InterfaceType,
            offset: usize,
        ) -> wasmtime::Result<()> {
            if cx.options().string_encoding != StringEncoding::Utf8 {
                return self.0.linear_lower_to_memory(cx, ty, offset);
            }
            let r = &self.0;
            let strings = [
                Some(r.name),
                Some(r.id),
                r.correlation_id,
                Some(r.source),
                Some(r.payload),
            ];
            // Room for each string, in field order (as the generic path asks).
            let mut at = [0usize; 5];
            for (s, at) in strings.iter().zip(&mut at) {
                if let Some(s) = s {
                    if s.len() > MAX_STRING {
                        wasmtime::bail!("string length of {} too large to copy into wasm", s.len());
                    }
                    *at = cx.realloc(0, 0, 1, s.len())?;
                }
            }
            // Where each field goes in the record.
            let mut next = offset;
            let string = <&str as ComponentType>::ABI;
            let name_at = string.next_field32_size(&mut next);
            let id_at = string.next_field32_size(&mut next);
            let time_at = <u64 as ComponentType>::ABI.next_field32_size(&mut next);
            let correlation_at = <Option<&str> as ComponentType>::ABI.next_field32_size(&mut next);
            let source_at = string.next_field32_size(&mut next);
            let payload_at = string.next_field32_size(&mut next);
            let some_at = correlation_at + <Option<&str> as ComponentVariant>::PAYLOAD_OFFSET32;

            let memory = cx.as_slice_mut();
            let out_of_bounds = || wasmtime::format_err!("event record out of bounds of the guest's memory");
            let mut put = |at: usize, bytes: &[u8]| -> wasmtime::Result<()> {
                memory
                    .get_mut(at..)
                    .and_then(|m| m.get_mut(..bytes.len()))
                    .ok_or_else(out_of_bounds)?
                    .copy_from_slice(bytes);
                Ok(())
            };
            let fields = [name_at, id_at, some_at, source_at, payload_at];
            for ((s, &ptr), field) in strings.iter().zip(&at).zip(fields) {
                if let Some(s) = s {
                    put(ptr, s.as_bytes())?;
                    // Both checked against the canonical ABI's 32-bit limits above.
                    put(field, &(ptr as u32).to_le_bytes())?;
                    put(field + 4, &(s.len() as u32).to_le_bytes())?;
                }
            }
            put(time_at, &r.time_unix_nanos.to_le_bytes())?;
            put(correlation_at, &[u8::from(r.correlation_id.is_some())])?;
            Ok(())
        }
    }
}

/// `value` as compact JSON text, written straight into a byte buffer:
/// `Value`'s `Display` goes through `fmt::Write` a piece at a time, which
/// made it the log writer's largest cost (issue 22's profile of scenario 8).
fn json_text(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    match serde_json::to_writer(&mut out, value) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| value.to_string()),
        // Never for a `Value` (its keys are strings); the slow path is as good.
        Err(_) => value.to_string(),
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.0.name)
            .field("id", &self.0.id)
            .field("source", &self.0.source)
            .field("correlation_id", &self.0.correlation_id)
            .field("payload", self.0.payload())
            .finish()
    }
}

/// Serialises as `{name, id, time_unix_nanos, correlation_id, source, payload}`,
/// the shape the audit log and the CLI write; the payload as
/// [`Event::payload_out`] writes it.
impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 6)?;
        st.serialize_field("name", &self.0.name)?;
        st.serialize_field("id", &self.0.id)?;
        st.serialize_field("time_unix_nanos", &self.0.time_unix_nanos)?;
        st.serialize_field("correlation_id", &self.0.correlation_id)?;
        st.serialize_field("source", &self.0.source)?;
        st.serialize_field("payload", &self.payload_out())?;
        st.end()
    }
}

/// An event's payload as JSON output writes it ([`Event::payload_out`]).
#[derive(Clone, Copy)]
pub struct PayloadOut<'a>(&'a EventData);

impl serde::Serialize for PayloadOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A text holds no line break outside its strings (JSON escapes
        // them inside): the one-line outputs (JSON Lines, SSE) stay one line.
        if let Some(text) = self.0.text.get().filter(|t| !t.contains(['\n', '\r']))
            && let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text)
        {
            return raw.serialize(s);
        }
        self.0.payload().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let ids: Vec<String> = (0..1000)
            .map(|_| Event::new("a", Value::Null).id().to_owned())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "UUIDv7 ids must be unique and sort in creation order");
    }

    #[test]
    fn follow_ups_inherit_correlation_and_depth() {
        let root = Event::new("a", json!(1)).with_correlation_id("run-1");
        let child = Event::follow_up(&root, "p", 0, "b".into(), json!(2));
        assert_eq!(child.correlation_id(), Some("run-1"));
        assert_eq!(child.source(), "p");
        assert_eq!(child.depth(), 1);
        let orphan = Event::follow_up(&Event::new("x", Value::Null), "p", 0, "y".into(), Value::Null);
        assert!(orphan.correlation_id().is_some());
        // Derived, not drawn: the same parent, plugin and index give the same event.
        let again = Event::follow_up(&root, "p", 0, "b".into(), json!(2));
        assert_eq!(
            (again.id(), again.time_unix_nanos()),
            (child.id(), child.time_unix_nanos())
        );
        let sibling = Event::follow_up(&root, "p", 1, "b".into(), json!(2));
        assert_ne!(sibling.id(), child.id());
        assert!(sibling.time_unix_nanos() > child.time_unix_nanos());
        assert_ne!(Event::follow_up(&root, "q", 0, "b".into(), json!(2)).id(), child.id());
        assert_eq!(uuid::Uuid::parse_str(child.id()).unwrap().get_version_num(), 7);
    }

    #[test]
    fn the_payload_text_is_written_once_and_shared_by_clones() {
        let ev = Event::new("a", json!({"k": 1}));
        let first: *const str = ev.payload_json();
        assert!(
            std::ptr::eq(first, ev.clone().payload_json()),
            "clones share the serialised payload"
        );
        assert_eq!(ev.wire().0.payload, r#"{"k":1}"#);
        let ev = ev.with_correlation_id("c");
        assert_eq!(ev.wire().0.correlation_id, Some("c"));
        assert_eq!(ev.payload_json(), r#"{"k":1}"#);
    }

    fn from_text(text: &str) -> Event {
        Event::decoded(7, "a".into(), "id-1".into(), 1, None, "nats".into(), 0, text.into())
    }

    #[test]
    fn an_event_read_as_text_is_written_from_its_text_without_being_parsed() {
        let ev = from_text(r#"{"b": [1, 2], "a": "x\ny"}"#);
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            line,
            r#"{"name":"a","id":"id-1","time_unix_nanos":1,"correlation_id":null,"source":"nats","payload":{"b": [1, 2], "a": "x\ny"}}"#
        );
        assert!(ev.0.payload.get().is_none(), "not parsed");
        let size = ev.approx_bytes();
        let _ = serde_json::to_string(&ev.payload_out()).unwrap();
        assert_eq!(ev.approx_bytes(), size, "nothing kept");
    }

    #[test]
    fn a_text_with_a_line_break_is_written_on_one_line_from_its_value() {
        let ev = from_text("{\n  \"a\": 1\r\n}");
        assert_eq!(serde_json::to_string(&ev.payload_out()).unwrap(), r#"{"a":1}"#);
        // An event made from a value writes its compact text.
        let ev = Event::new("a", serde_json::json!({"n": [1, 2]}));
        assert_eq!(serde_json::to_string(&ev.payload_out()).unwrap(), r#"{"n":[1,2]}"#);
        let _ = ev.payload_json();
        assert_eq!(serde_json::to_string(&ev.payload_out()).unwrap(), r#"{"n":[1,2]}"#);
    }
}
