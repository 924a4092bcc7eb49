//! W3C Trace Context: the `traceparent` header a request comes with and goes upstream with.

use std::fmt;

/// A trace id: 16 bytes, never all zero.
pub(crate) type TraceId = [u8; 16];
/// A span id: 8 bytes, never all zero.
pub(crate) type SpanId = [u8; 8];

/// What `traceparent` carries: the trace, the caller's span, and whether the caller
/// sampled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is malformed (a new trace starts then).
    /// A version past `00` is read as `00` is, as the specification asks, if it has at least
    /// `00`'s fields.
    pub(crate) fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches([' ', '\t']);
        let bytes = value.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&value[..2])?[0];
        match version {
            0 if bytes.len() != 55 => return None,
            0xff => return None,
            v if v > 0 && bytes.len() > 55 && bytes[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex::<16>(&value[3..35]).filter(|id| id.iter().any(|&b| b != 0))?;
        let span_id = hex::<8>(&value[36..52]).filter(|id| id.iter().any(|&b| b != 0))?;
        let flags = hex::<1>(&value[53..55])?[0];
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// As the header carries it: version `00`.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        write_hex(f, &self.trace_id)?;
        f.write_str("-")?;
        write_hex(f, &self.span_id)?;
        f.write_str(if self.sampled { "-01" } else { "-00" })
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// `N` bytes from exactly `2 × N` lowercase hex digits (the specification allows no
/// uppercase).
pub(crate) fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_is_read_and_written_back() {
        let parent = TraceParent::parse(VALID).unwrap();
        assert_eq!(parent.trace_id[0], 0x4b);
        assert_eq!(parent.span_id[7], 0xb7);
        assert!(parent.sampled);
        assert_eq!(parent.to_string(), VALID);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceParent::parse(&unsampled).unwrap().sampled);
        // Other flags are kept out; only `sampled` is read.
        assert!(
            TraceParent::parse(&VALID.replace("-01", "-03"))
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let later = VALID.replacen("00", "01", 1);
        assert!(TraceParent::parse(&later).is_some());
        assert!(TraceParent::parse(&format!("{later}-more")).is_some());
        assert!(TraceParent::parse(&format!("{later}more")).is_none());
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases = [
            "",
            "garbage",
            &VALID[..54],
            &format!("{VALID}-"),
            &VALID.replacen("00", "ff", 1),
            &VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &VALID.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &VALID.to_uppercase(),
            &VALID.replace('-', "_"),
            &VALID.replace("4b", "4g"),
        ];
        for case in cases {
            assert_eq!(TraceParent::parse(case), None, "{case:?}");
        }
    }
}
