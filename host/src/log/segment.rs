//! The on-disk format of the event log: segment files of checksummed frames.
//!
//! A log directory holds segment files named by the sequence number of their
//! first record, `00000000000000000001.seg`, each starting with an 8-byte
//! header (`PLUGBUS` + format version 1). Then frames, back to back:
//!
//! ```text
//! len: u32 LE | crc32: u32 LE | seq: u64 LE | time_unix_nanos: u64 LE | body: [u8; len - 16]
//! ```
//!
//! `crc32` (CRC-32/ISO-HDLC, `crc32fast`) covers `seq`, `time` and `body`;
//! `body` is the event as one JSON object ([`Record`]). `seq` and `time` sit
//! outside the JSON so that seeking and retention never parse a payload.
//! Sequence numbers increase strictly, within a segment and across
//! segments; a gap is an event delivered live but never logged (the writer
//! fell behind), which the bus announces with `plugbus.log.overflow`.
//!
//! Damage is classified here by its shape alone (the pattern of Kafka's
//! active segment): a frame cut short, a bad checksum on the very last frame,
//! or a zero-filled tail is a *torn tail*; any other bad frame is
//! *corruption*, an error naming the file and byte offset. Reopening a log
//! for writing refines that with the durable mark ([`super::durable`]):
//! damage at or past the synced length is a torn tail whatever its shape (a
//! power loss leaves any mix of new and zero pages there), damage before it
//! is corruption, even on the last frame.
//!
//! An event whose frame would pass [`MAX_FRAME`] is never written
//! ([`encode`] refuses it): what is acknowledged can always be read back.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::Event;

/// First bytes of every segment file: `PLUGBUS` and the format version.
pub(crate) const MAGIC: [u8; 8] = *b"PLUGBUS\x01";
/// `len` + `crc32`.
pub(crate) const FRAME_PREFIX: usize = 8;
/// `seq` + `time`, inside `len`.
pub(crate) const FRAME_FIXED: usize = 16;
/// Largest frame body accepted when reading. An event is at most what a
/// request body or a plugin emit may carry (1 MiB payload) plus its fields;
/// 64 MiB leaves room for embedders' large events while stopping a corrupt
/// length from making the reader allocate gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

/// Extension of segment files.
pub(crate) const SEGMENT_EXT: &str = "seg";

/// The highest sequence number a log holds: 2^62, which a log appending a
/// million events a second reaches in ~146,000 years. A segment name or a
/// frame past it is damage (or a hand-made file), refused when read, so
/// that no arithmetic on sequence numbers can overflow.
pub(crate) const MAX_SEQ: u64 = 1 << 62;

/// The file name of the segment whose first record is `first_seq`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

/// The first sequence number encoded in a segment's file name, if it is one.
pub(crate) fn parse_segment_name(path: &Path) -> Option<u64> {
    if path.extension()? != SEGMENT_EXT {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The segment files of `dir`, oldest first, with their first sequence numbers.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(first) = parse_segment_name(&path) {
            if first > MAX_SEQ {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: a segment starting at sequence {first}, past any a log reaches ({MAX_SEQ}); not written by plugbus",
                        path.display()
                    ),
                ));
            }
            segments.push((first, path));
        }
    }
    segments.sort_by_key(|(first, _)| *first);
    Ok(segments)
}

/// One event as stored: the JSON body of a frame, and the shape
/// `plugbus log show --json` prints (`depth` aside).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log.
    pub seq: u64,
    /// Event name.
    pub name: String,
    /// Event id.
    pub id: String,
    /// Creation time.
    pub time_unix_nanos: u64,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// `host` or the emitting plugin.
    pub source: String,
    /// How many plugin emits led to this event.
    #[serde(default)]
    pub depth: u8,
    /// The payload.
    pub payload: Value,
}

/// The borrowed twin of [`Record`] without its payload, written without
/// copying the event; the payload follows as the event's JSON text.
#[derive(Serialize)]
struct RecordHead<'a> {
    seq: u64,
    name: &'a str,
    id: &'a str,
    time_unix_nanos: u64,
    correlation_id: Option<&'a str>,
    source: &'a str,
    depth: u8,
}

impl<'a> RecordHead<'a> {
    /// The head of `event`'s frame at `seq`.
    fn of(event: &'a Event, seq: u64) -> RecordHead<'a> {
        RecordHead {
            seq,
            name: event.name(),
            id: event.id(),
            time_unix_nanos: event.time_unix_nanos(),
            correlation_id: event.correlation_id(),
            source: event.source(),
            depth: event.depth(),
        }
    }
}

impl Record {
    /// The record of a published event (`seq` 0 if it never was).
    pub fn from_event(event: &Event) -> Record {
        Record {
            seq: event.seq().unwrap_or(0),
            name: event.name().to_owned(),
            id: event.id().to_owned(),
            time_unix_nanos: event.time_unix_nanos(),
            correlation_id: event.correlation_id().map(str::to_owned),
            source: event.source().to_owned(),
            depth: event.depth(),
            payload: event.payload().clone(),
        }
    }

    /// The event this record holds, carrying its sequence number.
    pub fn into_event(self) -> Event {
        Event::restore(
            self.seq,
            self.name,
            self.id,
            self.time_unix_nanos,
            self.correlation_id,
            self.source,
            self.depth,
            self.payload,
        )
    }
}

/// A bound on the frame `len` of `event` that costs no serialisation: the
/// text of every string at its longest (each byte escaped as `\u00XX`),
/// numbers at their longest, and every separator. Most events are orders of
/// magnitude under [`MAX_FRAME`] by this bound alone, so the exact length
/// ([`max_frame_len`], which serialises the payload) is only needed near
/// the limit, and the payload's text is left for the log writer's thread to
/// make.
pub(crate) fn frame_len_bound(event: &Event) -> usize {
    // The head's fields, their keys and punctuation: 160 bytes is over the
    // keys and separators of `RecordHead` with both numbers at 20 digits.
    let strings = [
        event.name(),
        event.id(),
        event.source(),
        event.correlation_id().unwrap_or(""),
    ];
    let head: usize = strings.iter().map(|s| json_str_bound(s)).sum::<usize>() + 160;
    // An event born as text (read from NATS, mapped from OTLP) has its
    // exact length at hand; parsing it to bound it would cost far more.
    let payload = match event.payload_json_if_written() {
        Some(text) => text.len(),
        None => json_len_bound(event.payload()),
    };
    FRAME_FIXED + head + 11 + payload
}

/// The longest JSON text `s` can serialise to, quotes included.
fn json_str_bound(s: &str) -> usize {
    s.len().saturating_mul(6).saturating_add(2)
}

/// The longest compact JSON text `value` can serialise to.
fn json_len_bound(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        // An `f64` in serde_json's shortest form, or an `i64`/`u64`: at most 24.
        Value::Number(_) => 24,
        Value::String(s) => json_str_bound(s),
        Value::Array(items) => items
            .iter()
            .fold(2usize, |n, v| n.saturating_add(json_len_bound(v)).saturating_add(1)),
        Value::Object(map) => map.iter().fold(2usize, |n, (k, v)| {
            n.saturating_add(json_str_bound(k))
                .saturating_add(json_len_bound(v))
                .saturating_add(2)
        }),
    }
}

/// The longest frame `len` (body and `seq` + `time`) that `event` can
/// encode to, whatever sequence number it gets. Serialises the event's
/// payload if it was not yet (its text is kept for the plugins and the log).
pub(crate) fn max_frame_len(event: &Event) -> usize {
    let head = RecordHead::of(event, u64::MAX);
    // Serialising plain fields into a `Vec` cannot fail; the head is small.
    let head_len = serde_json::to_vec(&head).map_or(0, |v| v.len());
    // `{…}` becomes `{…,"payload":<text>}`: 11 more bytes than the head.
    FRAME_FIXED + head_len + 11 + event.payload_json().len()
}

/// Appends the frame of `event` at `seq` to `buf`. A frame longer than
/// [`MAX_FRAME`] is not appended (`buf` is left as it was): `Err` with its
/// length.
pub(crate) fn encode(buf: &mut Vec<u8>, seq: u64, event: &Event) -> Result<(), usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_PREFIX]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&event.time_unix_nanos().to_le_bytes());
    let head = RecordHead::of(event, seq);
    // Serialising plain fields into a `Vec` cannot fail.
    serde_json::to_writer(&mut *buf, &head).expect("JSON into a Vec");
    // `{…}` becomes `{…,"payload":<text>}`. The payload's JSON text is the
    // one the plugins receive: serialised once per event, for both.
    buf.pop();
    buf.extend_from_slice(b",\"payload\":");
    buf.extend_from_slice(event.payload_json().as_bytes());
    buf.push(b'}');
    let len = buf.len() - start - FRAME_PREFIX;
    if len > MAX_FRAME {
        buf.truncate(start);
        return Err(len);
    }
    // `len <= MAX_FRAME` (64 MiB) fits a u32.
    let len32 = u32::try_from(len).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&buf[start + FRAME_PREFIX..]);
    buf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A frame read back: its position and checked contents.
pub(crate) struct Frame {
    pub seq: u64,
    pub time_unix_nanos: u64,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Byte offset of the frame in its file.
    pub offset: u64,
}

impl Frame {
    /// Parses the JSON body.
    pub fn record(&self) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Parses the JSON body without parsing the payload: its text is kept
    /// as it is (checked as JSON). What catch-up, replay and recovery read:
    /// a plugin gets that very text, so turning it into a value and back
    /// into text (most of a catch-up's time once plugins take batches) is
    /// skipped, and the value is parsed only if something asks for it.
    pub fn raw(&self) -> Result<RawRecord<'_>, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A frame's body with the payload left as text, borrowed from the frame
/// (see [`Frame::raw`]).
#[derive(Deserialize)]
pub(crate) struct RawRecord<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub time_unix_nanos: u64,
    #[serde(borrow)]
    pub correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(default)]
    pub depth: u8,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

impl RawRecord<'_> {
    /// The event this record holds, carrying its sequence number; its
    /// plugins get the payload's text as it was logged.
    pub fn into_event(self) -> Event {
        Event::decoded(
            self.seq,
            self.name.into_owned(),
            self.id.into_owned(),
            self.time_unix_nanos,
            self.correlation_id.map(Cow::into_owned),
            self.source.into_owned(),
            self.depth,
            self.payload.get().to_owned(),
        )
    }
}

/// What stopped a scan before the end of a file.
#[derive(Debug)]
pub(crate) enum Damage {
    /// A frame cut short, a bad last frame or zero fill: safe to truncate at `offset`.
    TornTail { offset: u64, reason: String },
    /// Anything else: the file is corrupt at `offset`.
    Corrupt { offset: u64, reason: String },
    /// A whole frame, its checksum right, where it cannot be (numbered
    /// below what the segment's name or the frame before allows): a file
    /// renamed or spliced, never a torn write, so corruption wherever it
    /// lies, even past the synced length.
    Misplaced { offset: u64, reason: String },
}

/// Reads the frames of one segment file in order, checking each.
pub(crate) struct SegmentReader {
    reader: BufReader<File>,
    offset: u64,
    len: u64,
    /// The lowest sequence number the next frame may carry.
    expect: u64,
}

impl SegmentReader {
    /// Opens `path` (whose name says its first record is `first_seq`) and
    /// checks its header. The file's length is taken now: frames appended
    /// later are not read by this reader.
    pub fn open(path: &Path, first_seq: u64) -> io::Result<Result<SegmentReader, Damage>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(256 << 10, file);
        let mut magic = [0u8; 8];
        if len < MAGIC.len() as u64 {
            return Ok(Err(Damage::TornTail {
                offset: 0,
                reason: format!("the {len}-byte file is shorter than its header"),
            }));
        }
        reader.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Ok(Err(Damage::Corrupt {
                offset: 0,
                reason: "not a plugbus log segment (bad header)".into(),
            }));
        }
        Ok(Ok(SegmentReader {
            reader,
            offset: MAGIC.len() as u64,
            len,
            expect: first_seq,
        }))
    }

    /// The file's length when it was opened: how far this reader reads.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Moves to `offset`, a frame boundary this file had when an earlier
    /// reader of it stopped there ([`SegmentReader::position`]), whose next
    /// frame carries `expect` or more. Segments are only appended to, so the
    /// boundary stays one; an offset past the file's length (the file was
    /// replaced) is refused with `false` and the reader stays at the start.
    pub fn resume_at(&mut self, offset: u64, expect: u64) -> io::Result<bool> {
        if offset < MAGIC.len() as u64 || offset > self.len || expect < self.expect {
            return Ok(false);
        }
        self.reader.seek(SeekFrom::Start(offset))?;
        self.offset = offset;
        self.expect = expect;
        Ok(true)
    }

    /// Where this reader stands: the offset of its next frame and the lowest
    /// sequence number that frame may carry.
    pub fn position(&self) -> (u64, u64) {
        (self.offset, self.expect)
    }

    /// The next frame; `Ok(None)` at a clean end of file. With `skip_before`,
    /// frames whose seq is lower are checked for position only, their bodies
    /// skipped unread (so seeking does not checksum what it passes over).
    pub fn next_frame(&mut self, skip_before: u64) -> io::Result<Result<Option<Frame>, Damage>> {
        loop {
            let offset = self.offset;
            let left = self.len - offset;
            if left == 0 {
                return Ok(Ok(None));
            }
            let torn = |reason: String| Ok(Err(Damage::TornTail { offset, reason }));
            if left < (FRAME_PREFIX + FRAME_FIXED) as u64 {
                if self.rest_is_zero()? {
                    return torn("zero-filled tail".into());
                }
                return torn(format!("a frame cut short ({left} bytes)"));
            }
            let mut head = [0u8; FRAME_PREFIX + FRAME_FIXED];
            self.reader.read_exact(&mut head)?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let seq = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            let time = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
            if len == 0 && crc == 0 && self.rest_is_zero_from(offset)? {
                return torn("zero-filled tail".into());
            }
            if !(FRAME_FIXED..=MAX_FRAME).contains(&len) {
                return self.bad(offset, format!("impossible frame length {len}"));
            }
            let end = offset + (FRAME_PREFIX + len) as u64;
            if end > self.len {
                return torn(format!(
                    "a frame cut short ({} of {} bytes)",
                    self.len - offset,
                    FRAME_PREFIX + len
                ));
            }
            if seq > MAX_SEQ {
                return self.bad(offset, format!("sequence {seq} past any a log reaches ({MAX_SEQ})"));
            }
            let body_len = len - FRAME_FIXED;
            if seq < skip_before && seq >= self.expect {
                // Trust the position, skip the body unchecked.
                self.reader.seek_relative(body_len as i64)?;
                self.offset = end;
                self.expect = seq + 1;
                continue;
            }
            let mut body = vec![0u8; body_len];
            self.reader.read_exact(&mut body)?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&head[8..]);
            hasher.update(&body);
            if hasher.finalize() != crc {
                if end == self.len {
                    return torn("bad checksum on the last frame".into());
                }
                return self.bad(offset, "checksum mismatch".into());
            }
            if seq < self.expect {
                return Ok(Err(Damage::Misplaced {
                    offset,
                    reason: format!("sequence {seq} where {} or more was expected", self.expect),
                }));
            }
            self.offset = end;
            self.expect = seq + 1;
            return Ok(Ok(Some(Frame {
                seq,
                time_unix_nanos: time,
                body,
                offset,
            })));
        }
    }

    /// Damage at `offset`: a torn tail when nothing but zeros follows,
    /// corruption otherwise.
    fn bad(&mut self, offset: u64, reason: String) -> io::Result<Result<Option<Frame>, Damage>> {
        if self.rest_is_zero_from(offset)? {
            return Ok(Err(Damage::TornTail {
                offset,
                reason: format!("{reason}, then only zeros"),
            }));
        }
        Ok(Err(Damage::Corrupt { offset, reason }))
    }

    fn rest_is_zero(&mut self) -> io::Result<bool> {
        let offset = self.offset;
        self.rest_is_zero_from(offset)
    }

    /// True when every byte from `offset` to the end is zero (a preallocated
    /// or partly flushed tail).
    fn rest_is_zero_from(&mut self, offset: u64) -> io::Result<bool> {
        // `BufReader`'s own seek keeps its buffer consistent with the file.
        let saved = self.reader.stream_position()?;
        self.reader.seek(SeekFrom::Start(offset))?;
        let mut buf = [0u8; 64 << 10];
        let mut all_zero = true;
        loop {
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|b| *b != 0) {
                all_zero = false;
                break;
            }
        }
        self.reader.seek(SeekFrom::Start(saved))?;
        Ok(all_zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    /// The cheap bound `check_size` trusts is never under the real length,
    /// however the payload escapes (control characters, quotes, non-ASCII)
    /// and whatever its numbers.
    #[test]
    fn the_frame_length_bound_is_never_under_the_encoded_length() {
        let nasty = "\u{1}\u{1f}\"\\\n\té€😀</script>";
        let payloads = [
            json!(null),
            json!({}),
            json!({ "i": 1 }),
            json!({ "s": nasty, nasty: [nasty, nasty] }),
            json!([
                f64::MIN_POSITIVE,
                -f64::MAX,
                f64::MAX,
                i64::MIN,
                u64::MAX,
                -0.0,
                1e-7,
                123.456e300
            ]),
            json!({ "deep": [[[{ "a": [true, false, null, "\u{0}".repeat(1000)] }]]] }),
            json!("x".repeat(100_000)),
        ];
        for (i, payload) in payloads.into_iter().enumerate() {
            let mut ev = Event::new(format!("ev.{nasty}"), payload);
            if i % 2 == 0 {
                ev = ev.with_correlation_id(nasty);
            }
            // Bounded from the value (the text is not written yet), then,
            // once encoding has written it, from the text.
            let from_value = frame_len_bound(&ev);
            let mut buf = Vec::new();
            encode(&mut buf, u64::MAX, &ev).unwrap();
            let encoded = buf.len() - FRAME_PREFIX;
            assert!(from_value >= encoded, "payload {i}: bound {from_value} < {encoded}");
            assert!(frame_len_bound(&ev) >= encoded, "payload {i}: from the text");
            assert!(frame_len_bound(&ev) >= max_frame_len(&ev), "payload {i}");
        }
    }

    fn write_segment(path: &Path, first: u64, n: u64) -> Vec<u64> {
        let mut buf = MAGIC.to_vec();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(buf.len() as u64);
            let ev = Event::new(format!("e{i}"), json!({ "i": i }));
            encode(&mut buf, first + i, &ev).unwrap();
        }
        std::fs::write(path, &buf).unwrap();
        offsets
    }

    fn read_all(path: &Path, first: u64) -> (Vec<u64>, Option<Damage>) {
        let mut r = match SegmentReader::open(path, first).unwrap() {
            Ok(r) => r,
            Err(d) => return (vec![], Some(d)),
        };
        let mut seqs = vec![];
        loop {
            match r.next_frame(0).unwrap() {
                Ok(Some(f)) => {
                    assert_eq!(f.record().unwrap().seq, f.seq);
                    seqs.push(f.seq)
                }
                Ok(None) => return (seqs, None),
                Err(d) => return (seqs, Some(d)),
            }
        }
    }

    #[test]
    fn frames_round_trip_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(5));
        assert_eq!(parse_segment_name(&path), Some(5));
        let mut buf = MAGIC.to_vec();
        let ev = Event::new("tool.called", json!({"tool": "search"})).with_correlation_id("run-1");
        encode(&mut buf, 5, &ev).unwrap();
        assert_eq!(
            max_frame_len(&ev) - (buf.len() - MAGIC.len() - FRAME_PREFIX),
            19,
            "seq 5 vs u64::MAX"
        );
        std::fs::write(&path, &buf).unwrap();
        let mut r = SegmentReader::open(&path, 5).unwrap().unwrap();
        let frame = r.next_frame(0).unwrap().unwrap().unwrap();
        let back = frame.record().unwrap().into_event();
        assert_eq!(back.seq(), Some(5));
        assert_eq!(back.id(), ev.id());
        assert_eq!(back.correlation_id(), Some("run-1"));
        assert_eq!(back.payload(), ev.payload());
        assert_eq!(back.time_unix_nanos(), ev.time_unix_nanos());
        // Read without parsing the payload: the very text plugins got live.
        let raw = frame.raw().unwrap().into_event();
        assert_eq!(raw.payload_json(), ev.payload_json());
        assert_eq!(
            (
                raw.seq(),
                raw.id(),
                raw.name(),
                raw.correlation_id(),
                raw.source(),
                raw.depth()
            ),
            (Some(5), ev.id(), ev.name(), Some("run-1"), "host", 0)
        );
        assert_eq!(raw.payload(), ev.payload(), "parsed on demand");
        assert!(r.next_frame(0).unwrap().unwrap().is_none());
    }

    #[test]
    fn a_raw_record_keeps_escaped_text_exactly() {
        let mut buf = MAGIC.to_vec();
        let ev = Event::new("a\"b", json!({"q": "line\nbreak \"quoted\" \u{1F600}", "n": 1.5e300}))
            .with_correlation_id("c\\d");
        encode(&mut buf, 1, &ev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        std::fs::write(&path, &buf).unwrap();
        let mut r = SegmentReader::open(&path, 1).unwrap().unwrap();
        let raw = r.next_frame(0).unwrap().unwrap().unwrap().raw().unwrap().into_event();
        assert_eq!((raw.name(), raw.correlation_id()), (ev.name(), ev.correlation_id()));
        assert_eq!(raw.payload_json(), ev.payload_json());
    }

    #[test]
    fn a_frame_cut_short_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let offsets = write_segment(&path, 1, 4);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let (seqs, damage) = read_all(&path, 1);
        assert_eq!(seqs, [1, 2, 3]);
        match damage {
            Some(Damage::TornTail { offset, .. }) => assert_eq!(offset, offsets[3]),
            other => panic!("expected a torn tail, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_checksum_mid_file_is_corruption_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let offsets = write_segment(&path, 1, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = offsets[1] as usize + FRAME_PREFIX + FRAME_FIXED + 2;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (seqs, damage) = read_all(&path, 1);
        assert_eq!(seqs, [1]);
        match damage {
            Some(Damage::Corrupt { offset, reason }) => {
                assert_eq!(offset, offsets[1]);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_last_frame_and_a_zero_tail_are_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let offsets = write_segment(&path, 1, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (seqs, damage) = read_all(&path, 1);
        assert_eq!(seqs, [1, 2]);
        assert!(matches!(damage, Some(Damage::TornTail { offset, .. }) if offset == offsets[2]));

        write_segment(&path, 1, 3);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        let (seqs, damage) = read_all(&path, 1);
        assert_eq!(seqs, [1, 2, 3]);
        assert!(matches!(damage, Some(Damage::TornTail { .. })), "{damage:?}");
    }

    #[test]
    fn a_wrong_header_or_a_sequence_going_back_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        std::fs::write(&path, b"NOTALOG!........................").unwrap();
        assert!(matches!(read_all(&path, 1).1, Some(Damage::Corrupt { offset: 0, .. })));
        write_segment(&path, 1, 3);
        // Read it as if it started at 2: the first frame is out of sequence.
        let (seqs, damage) = read_all(&path, 2);
        assert!(seqs.is_empty());
        assert!(matches!(damage, Some(Damage::Misplaced { reason, .. }) if reason.contains("sequence")));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_and_leaves_the_buffer_as_it_was() {
        let mut buf = MAGIC.to_vec();
        let small = Event::new("small", json!(1));
        encode(&mut buf, 1, &small).unwrap();
        let before = buf.clone();
        // A payload whose frame passes MAX_FRAME by a few bytes.
        let big = Event::new("big", json!("x".repeat(MAX_FRAME)));
        assert!(max_frame_len(&big) > MAX_FRAME);
        let len = encode(&mut buf, 2, &big).unwrap_err();
        assert!(len > MAX_FRAME && len <= max_frame_len(&big), "{len}");
        assert_eq!(buf, before, "nothing of it is left in the batch");
        encode(&mut buf, 2, &small).unwrap();
    }

    #[test]
    fn seeking_skips_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(10));
        write_segment(&path, 10, 50);
        let mut r = SegmentReader::open(&path, 10).unwrap().unwrap();
        let f = r.next_frame(40).unwrap().unwrap().unwrap();
        assert_eq!(f.seq, 40);
    }
}
