//! A frame layout and its codec: where the markers, the header's fields and the body are, how
//! to read frames from a connection's bytes and how to write them.
//!
//! Decoding is incremental and never consumes past a frame: [`Layout::decode`] takes one whole
//! frame off the front of the buffer, or leaves the buffer as it is. The body is split from the
//! buffer, not copied. A header announcing a body over the limit is refused before any of the
//! body is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pylon_model::FieldError;

use crate::config::{parse_marker, ByteOrder, FieldSpec, LayoutConfig, LengthIncludes};

/// The most named header fields a layout has ([`LayoutConfig::fields`]).
pub const MAX_FIELDS: usize = 8;

/// One frame: the header's values and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub command: u64,
    pub sequence: u64,
    /// The named header fields; 0 for those not set.
    pub fields: Fields,
    pub body: Bytes,
}

/// The values of a layout's named header fields, by [`FieldId`]: a fixed array, so a frame
/// costs no allocation beyond its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields([u64; MAX_FIELDS]);

/// A named header field of one layout (see [`Layout::field`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldId(u8);

impl Fields {
    pub fn get(&self, id: FieldId) -> u64 {
        self.0[usize::from(id.0)]
    }

    pub fn set(&mut self, id: FieldId, value: u64) {
        self.0[usize::from(id.0)] = value;
    }
}

/// Why bytes are not a frame. A connection cannot find the next frame after one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame that does not begin with the start marker")]
    MissingStart,
    #[error("a frame whose end marker is missing or wrong")]
    BadEnd,
    #[error("a body of {length} bytes, over max_body {max}")]
    TooLong { length: u64, max: u64 },
    #[error("a length of {length}, less than the {counted} header and marker bytes it counts")]
    BadLength { length: u64, counted: u64 },
    #[error("the connection closed {received} bytes into a frame")]
    Truncated { received: usize },
}

impl FrameError {
    /// A short name for metrics and logs: `missing_start`, `bad_end`, `too_long`,
    /// `bad_length`, `truncated`.
    pub fn name(&self) -> &'static str {
        match self {
            FrameError::MissingStart => "missing_start",
            FrameError::BadEnd => "bad_end",
            FrameError::TooLong { .. } => "too_long",
            FrameError::BadLength { .. } => "bad_length",
            FrameError::Truncated { .. } => "truncated",
        }
    }
}

/// Why a frame cannot be written in a layout: a value wider than its header field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} {value} does not fit in {width} bytes")]
    TooWide {
        field: String,
        value: u64,
        width: usize,
    },
    #[error("a body of {length} bytes; the length field holds at most {max}")]
    BodyTooLong { length: u64, max: u64 },
}

/// Where a value sits in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    offset: usize,
    width: usize,
    order: ByteOrder,
}

impl Slot {
    fn new(spec: FieldSpec) -> Self {
        Self {
            offset: spec.offset as usize,
            width: usize::from(spec.width),
            order: spec.order,
        }
    }

    fn read(&self, header: &[u8]) -> u64 {
        let bytes = &header[self.offset..self.offset + self.width];
        let push = |value: u64, &byte: &u8| value << 8 | u64::from(byte);
        match self.order {
            ByteOrder::Big => bytes.iter().fold(0, push),
            ByteOrder::Little => bytes.iter().rev().fold(0, push),
        }
    }

    /// Writes `value`, which [`Slot::fits`].
    fn write(&self, header: &mut [u8], value: u64) {
        let into = &mut header[self.offset..self.offset + self.width];
        match self.order {
            ByteOrder::Big => into.copy_from_slice(&value.to_be_bytes()[8 - self.width..]),
            ByteOrder::Little => into.copy_from_slice(&value.to_le_bytes()[..self.width]),
        }
    }

    fn max(&self) -> u64 {
        u64::MAX >> (64 - 8 * self.width)
    }

    fn fits(&self, field: &str, value: u64) -> Result<(), EncodeError> {
        if value <= self.max() {
            Ok(())
        } else {
            Err(EncodeError::TooWide {
                field: field.to_owned(),
                value,
                width: self.width,
            })
        }
    }
}

/// A validated [`LayoutConfig`] with its body limit, ready to read and write frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    start: Box<[u8]>,
    end: Box<[u8]>,
    header_length: usize,
    body_length: Slot,
    /// What the length counts besides the body.
    length_overhead: u64,
    command: Slot,
    sequence: Slot,
    /// By name, in name order; a [`FieldId`] is an index here.
    fields: Box<[(Box<str>, Slot)]>,
    max_body: u64,
}

impl Layout {
    /// The layout of `config`, or every problem in it (paths relative to the layout).
    /// `max_body` bounds the bodies [`Layout::decode`] accepts.
    pub fn new(config: &LayoutConfig, max_body: u64) -> Result<Self, Vec<FieldError>> {
        let errors = config.validate();
        if errors.is_empty() {
            Ok(Self::from_valid(config, max_body))
        } else {
            Err(errors)
        }
    }

    /// The layout of `config`, which has no problem.
    pub(crate) fn from_valid(config: &LayoutConfig, max_body: u64) -> Self {
        let marker = |hex: &Option<String>| {
            // Valid: every marker parses.
            hex.as_deref()
                .map_or(Ok(Vec::new()), parse_marker)
                .unwrap_or_default()
                .into_boxed_slice()
        };
        let (start, end) = (marker(&config.start), marker(&config.end));
        let header_length = config.header_length as usize;
        let length_overhead = match config.length_includes {
            LengthIncludes::Body => 0,
            LengthIncludes::HeaderAndBody => header_length,
            LengthIncludes::Frame => start.len() + header_length + end.len(),
        } as u64;
        Self {
            start,
            end,
            header_length,
            body_length: Slot::new(config.body_length),
            length_overhead,
            command: Slot::new(config.command),
            sequence: Slot::new(config.sequence),
            fields: (config.fields.iter())
                .map(|(name, spec)| (name.as_str().into(), Slot::new(*spec)))
                .collect(),
            max_body,
        }
    }

    /// The named header field `name`.
    pub fn field(&self, name: &str) -> Option<FieldId> {
        let index = self.fields.iter().position(|(n, _)| &**n == name)?;
        // At most MAX_FIELDS fields: the index fits.
        Some(FieldId(index as u8))
    }

    /// The named header fields, in name order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, FieldId)> {
        (self.fields.iter().enumerate()).map(|(index, (name, _))| (&**name, FieldId(index as u8)))
    }

    /// The bytes of a frame with a body of `body` bytes.
    /// The largest body [`Layout::decode`] accepts.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    pub fn frame_len(&self, body: usize) -> usize {
        self.start.len() + self.header_length + body + self.end.len()
    }

    /// Takes the frame at the front of `buf` off it. `Ok(None)`: the frame is not all there
    /// yet, and `buf` has room reserved for the rest of it. On an error, `buf` is as it was.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let start = self.start.len();
        let known = buf.len().min(start);
        if buf[..known] != self.start[..known] {
            return Err(FrameError::MissingStart);
        }
        let header_end = start + self.header_length;
        if buf.len() < header_end {
            return Ok(None);
        }
        let header = &buf[start..header_end];
        let body = self.body_length(header)?;
        let body_end = header_end + body;
        let frame_end = body_end + self.end.len();
        if buf.len() < frame_end {
            buf.reserve(frame_end - buf.len());
            return Ok(None);
        }
        if buf[body_end..frame_end] != *self.end {
            return Err(FrameError::BadEnd);
        }
        let mut fields = Fields::default();
        for (value, (_, slot)) in fields.0.iter_mut().zip(self.fields.iter()) {
            *value = slot.read(header);
        }
        let (command, sequence) = (self.command.read(header), self.sequence.read(header));
        buf.advance(header_end);
        let body = buf.split_to(body).freeze();
        buf.advance(self.end.len());
        Ok(Some(Frame {
            command,
            sequence,
            fields,
            body,
        }))
    }

    /// The body length the header announces, within `max_body`.
    fn body_length(&self, header: &[u8]) -> Result<usize, FrameError> {
        let length = self.body_length.read(header);
        let body = length
            .checked_sub(self.length_overhead)
            .ok_or(FrameError::BadLength {
                length,
                counted: self.length_overhead,
            })?;
        if body > self.max_body {
            return Err(FrameError::TooLong {
                length: body,
                max: self.max_body,
            });
        }
        // At most max_body, which is far below usize::MAX.
        Ok(body as usize)
    }

    /// The sequence id of the frame at the front of `bytes`, when its start marker and header
    /// are there: what an error frame answering a bad frame carries.
    pub fn sequence_of(&self, bytes: &[u8]) -> Option<u64> {
        let header = bytes
            .strip_prefix(&*self.start)?
            .get(..self.header_length)?;
        Some(self.sequence.read(header))
    }

    /// The largest sequence id the header holds.
    pub fn max_sequence(&self) -> u64 {
        self.sequence.max()
    }

    /// Whether [`Layout::encode`] can write `frame`: every value fits its header field.
    pub fn check(&self, frame: &Frame) -> Result<(), EncodeError> {
        let length = frame.body.len() as u64 + self.length_overhead;
        if length > self.body_length.max() {
            return Err(EncodeError::BodyTooLong {
                length: frame.body.len() as u64,
                max: self.body_length.max() - self.length_overhead,
            });
        }
        self.command.fits("command", frame.command)?;
        self.sequence.fits("sequence", frame.sequence)?;
        for ((name, slot), &value) in self.fields.iter().zip(frame.fields.0.iter()) {
            slot.fits(name, value)?;
        }
        Ok(())
    }

    /// Appends `frame` to `buf`, or nothing when a value does not fit its header field.
    pub fn encode(&self, frame: &Frame, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.check(frame)?;
        let length = frame.body.len() as u64 + self.length_overhead;

        buf.reserve(self.frame_len(frame.body.len()));
        buf.put_slice(&self.start);
        let header_at = buf.len();
        // Bytes no field covers are written as zeros.
        buf.put_bytes(0, self.header_length);
        let header = &mut buf[header_at..];
        self.body_length.write(header, length);
        self.command.write(header, frame.command);
        self.sequence.write(header, frame.sequence);
        for ((_, slot), &value) in self.fields.iter().zip(frame.fields.0.iter()) {
            slot.write(header, value);
        }
        buf.put_slice(&frame.body);
        buf.put_slice(&self.end);
        Ok(())
    }

    /// Writes `sequence` into `frame`, the bytes of a whole frame of this layout.
    pub(crate) fn set_sequence(&self, frame: &mut [u8], sequence: u64) {
        self.sequence
            .write(&mut frame[self.start.len()..], sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// HelloTalk's frame: 0x09, a 20-byte header, the body, 0x0A.
    fn hellotalk() -> Layout {
        let config = json!({
            "start": "09", "end": "0a", "header_length": 20,
            "body_length": {"offset": 0, "width": 4},
            "command": {"offset": 4, "width": 2},
            "sequence": {"offset": 6, "width": 4},
            "fields": {
                "version": {"offset": 10, "width": 1},
                "flags": {"offset": 11, "width": 1},
                "user_id": {"offset": 12, "width": 4}
            }
        });
        Layout::new(&serde_json::from_value(config).unwrap(), 1024).unwrap()
    }

    /// Little-endian, 8-byte fields, a two-byte start marker, no end marker, and a length
    /// that counts the whole frame.
    fn wide() -> Layout {
        let config = json!({
            "start": "CAFE", "header_length": 32, "length_includes": "frame",
            "body_length": {"offset": 0, "width": 8, "order": "little"},
            "command": {"offset": 8, "width": 8, "order": "little"},
            "sequence": {"offset": 16, "width": 8, "order": "little"},
            "fields": {"trace": {"offset": 24, "width": 8, "order": "little"}}
        });
        Layout::new(&serde_json::from_value(config).unwrap(), 1024).unwrap()
    }

    fn frame(
        layout: &Layout,
        command: u64,
        sequence: u64,
        fields: &[(&str, u64)],
        body: &'static [u8],
    ) -> Frame {
        let mut frame = Frame {
            command,
            sequence,
            fields: Fields::default(),
            body: Bytes::from_static(body),
        };
        for (name, value) in fields {
            frame.fields.set(layout.field(name).unwrap(), *value);
        }
        frame
    }

    const HELLOTALK_BYTES: &[u8] = &[
        0x09, // start
        0, 0, 0, 3, // body length
        0x10, 0x01, // command 4097
        0, 0, 0x01, 0x02, // sequence 258
        1,    // version
        0x80, // flags
        0, 1, 0xe2, 0x40, // user id 123456
        0, 0, 0, 0, // reserved
        b'a', b'b', b'c', // body
        0x0a, // end
    ];

    #[test]
    fn hellotalk_frames_encode_and_decode_byte_for_byte() {
        let layout = hellotalk();
        let frame = frame(
            &layout,
            4097,
            258,
            &[("version", 1), ("flags", 0x80), ("user_id", 123_456)],
            b"abc",
        );
        let mut buf = BytesMut::new();
        layout.encode(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..], HELLOTALK_BYTES);

        let mut buf = BytesMut::from(HELLOTALK_BYTES);
        buf.extend_from_slice(b"\x09next");
        assert_eq!(layout.decode(&mut buf), Ok(Some(frame)));
        assert_eq!(&buf[..], b"\x09next", "the next frame's bytes stay");
    }

    #[test]
    fn little_endian_eight_byte_frames_encode_and_decode_byte_for_byte() {
        let layout = wide();
        let frame = frame(
            &layout,
            0x0102_0304_0506_0708,
            u64::MAX,
            &[("trace", 0xdead_beef)],
            b"xy",
        );
        let mut expected = vec![0xca, 0xfe];
        expected.extend_from_slice(&36u64.to_le_bytes()); // 2 + 32 + 2
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expected.extend_from_slice(&[0xff; 8]);
        expected.extend_from_slice(&[0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0]);
        expected.extend_from_slice(b"xy");
        let mut buf = BytesMut::new();
        layout.encode(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..], &expected[..]);
        assert_eq!(layout.decode(&mut buf), Ok(Some(frame)));
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_split_at_every_byte_boundary_decode_the_same() {
        for layout in [hellotalk(), wide()] {
            let frames = [
                frame(&layout, 1, 10, &[], b"first"),
                frame(&layout, 2, 11, &[], b""),
                frame(&layout, 3, 12, &[], b"third body"),
            ];
            let mut bytes = BytesMut::new();
            for f in &frames {
                layout.encode(f, &mut bytes).unwrap();
            }
            for split in 0..=bytes.len() {
                let mut buf = BytesMut::new();
                let mut decoded = Vec::new();
                for part in [&bytes[..split], &bytes[split..]] {
                    buf.extend_from_slice(part);
                    while let Some(frame) = layout.decode(&mut buf).unwrap() {
                        decoded.push(frame);
                    }
                }
                assert_eq!(decoded, frames, "split at {split}");
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn bytes_fed_one_at_a_time_decode_once_the_frame_is_whole() {
        let layout = hellotalk();
        let mut buf = BytesMut::new();
        for (i, &byte) in HELLOTALK_BYTES.iter().enumerate() {
            buf.put_u8(byte);
            let decoded = layout.decode(&mut buf).unwrap();
            assert_eq!(
                decoded.is_some(),
                i == HELLOTALK_BYTES.len() - 1,
                "byte {i}"
            );
        }
    }

    #[test]
    fn a_missing_start_marker_is_seen_on_the_first_byte() {
        let layout = wide();
        let mut buf = BytesMut::from(&[0xca][..]);
        assert_eq!(layout.decode(&mut buf), Ok(None));
        buf.put_u8(0xff);
        assert_eq!(layout.decode(&mut buf), Err(FrameError::MissingStart));
        assert_eq!(
            layout.decode(&mut BytesMut::from(&b"GET /"[..])),
            Err(FrameError::MissingStart)
        );
    }

    #[test]
    fn a_wrong_end_marker_is_refused_and_the_buffer_kept() {
        let layout = hellotalk();
        let mut bytes = HELLOTALK_BYTES.to_vec();
        *bytes.last_mut().unwrap() = 0x0b;
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(layout.decode(&mut buf), Err(FrameError::BadEnd));
        assert_eq!(&buf[..], &bytes[..]);
        assert_eq!(layout.sequence_of(&buf), Some(258));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_from_the_header_alone() {
        let layout = hellotalk();
        let mut header = HELLOTALK_BYTES[..21].to_vec();
        header[1..5].copy_from_slice(&1025u32.to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(
            layout.decode(&mut buf),
            Err(FrameError::TooLong {
                length: 1025,
                max: 1024
            })
        );
        assert!(buf.capacity() < 1025, "no room was made for the body");
        header[1..5].copy_from_slice(&1024u32.to_be_bytes());
        assert_eq!(layout.decode(&mut BytesMut::from(&header[..])), Ok(None));
    }

    #[test]
    fn a_length_shorter_than_what_it_counts_is_refused() {
        let layout = wide();
        let mut bytes = BytesMut::new();
        layout
            .encode(&frame(&layout, 1, 1, &[], b""), &mut bytes)
            .unwrap();
        bytes[2..10].copy_from_slice(&33u64.to_le_bytes());
        assert_eq!(
            layout.decode(&mut bytes),
            Err(FrameError::BadLength {
                length: 33,
                counted: 34
            })
        );
        assert_eq!(
            FrameError::BadLength {
                length: 33,
                counted: 34
            }
            .to_string(),
            "a length of 33, less than the 34 header and marker bytes it counts"
        );
    }

    #[test]
    fn values_wider_than_their_fields_are_not_written() {
        let layout = hellotalk();
        let mut buf = BytesMut::new();
        let too_wide = [
            (
                frame(&layout, 65_536, 1, &[], b""),
                "command 65536 does not fit in 2 bytes",
            ),
            (
                frame(&layout, 1, 1 << 32, &[], b""),
                "sequence 4294967296 does not fit in 4 bytes",
            ),
            (
                frame(&layout, 1, 1, &[("flags", 256)], b""),
                "flags 256 does not fit in 1 bytes",
            ),
        ];
        for (frame, message) in too_wide {
            assert_eq!(
                layout.encode(&frame, &mut buf).unwrap_err().to_string(),
                message
            );
        }
        assert!(buf.is_empty(), "nothing of a refused frame is written");
    }

    #[test]
    fn a_body_longer_than_the_length_field_holds_is_not_written() {
        let config = json!({
            "header_length": 3, "length_includes": "header_and_body",
            "body_length": {"offset": 0, "width": 1},
            "command": {"offset": 1, "width": 1},
            "sequence": {"offset": 2, "width": 1}
        });
        let layout = Layout::new(&serde_json::from_value(config).unwrap(), 1024).unwrap();
        let body = Bytes::from(vec![7; 253]);
        let mut buf = BytesMut::new();
        let error = layout.encode(
            &Frame {
                body,
                ..Frame::default()
            },
            &mut buf,
        );
        assert_eq!(
            error,
            Err(EncodeError::BodyTooLong {
                length: 253,
                max: 252
            })
        );
        layout
            .encode(
                &Frame {
                    body: Bytes::from(vec![7; 252]),
                    ..Frame::default()
                },
                &mut buf,
            )
            .unwrap();
        assert_eq!(buf[0], 255);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever a client sends, the decoder takes exactly one frame off the front (which
        /// encodes back to the bytes it took), or leaves the bytes as they were.
        #[test]
        fn any_bytes_decode_to_one_frame_or_nothing(
            marked: bool,
            tail in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            // Small fields and limits, so that random bytes make frames too.
            let config = json!({
                "start": "09", "end": "0a", "header_length": 3,
                "body_length": {"offset": 0, "width": 1},
                "command": {"offset": 1, "width": 1},
                "sequence": {"offset": 2, "width": 1}
            });
            let layout = Layout::new(&serde_json::from_value(config).unwrap(), 16).unwrap();
            let bytes: Vec<u8> = marked.then_some(0x09).into_iter().chain(tail).collect();
            let mut buf = BytesMut::from(&bytes[..]);
            match layout.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut encoded = BytesMut::new();
                    layout.encode(&frame, &mut encoded).unwrap();
                    prop_assert_eq!([&encoded[..], &buf[..]].concat(), bytes);
                }
                Ok(None) | Err(_) => prop_assert_eq!(&buf[..], &bytes[..]),
            }
        }
    }
}
