//! The few OTLP messages the exporter sends (`opentelemetry/proto/collector/trace/v1`), by
//! hand with prost's derive: the field numbers are those of the OTLP protobuf definitions.
//!
//! A span is encoded once, in the log phase; a batch of them becomes an
//! `ExportTraceServiceRequest` by wrapping the encoded spans, not by decoding them again:
//! a repeated message field is its elements' encodings, each with its tag and length. The
//! wrapping messages are declared for the tests, which decode what the wrapping made.

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

#[cfg(test)]
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[cfg(test)]
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[cfg(test)]
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `Span.SpanKind.SPAN_KIND_SERVER`.
pub(crate) const SPAN_KIND_SERVER: i32 = 2;
/// `Status.StatusCode.STATUS_CODE_ERROR`; the default, `UNSET`, is 0.
pub(crate) const STATUS_CODE_ERROR: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

impl KeyValue {
    pub(crate) fn new(key: impl Into<String>, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    pub(crate) fn string(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue::new(key, Value::String(value.into()))
    }
}

/// An `ExportTraceServiceRequest` of `spans` (each one encoded [`Span`]) from `resource`
/// (an encoded [`Resource`]), in one scope named `scope`.
pub(crate) fn export_request(
    resource: &[u8],
    scope: &InstrumentationScope,
    spans: &[Vec<u8>],
) -> Vec<u8> {
    let mut scope_spans = Vec::new();
    field(&mut scope_spans, 1, &scope.encode_to_vec());
    for span in spans {
        field(&mut scope_spans, 2, span);
    }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    field(&mut resource_spans, 1, resource);
    field(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    field(&mut request, 1, &resource_spans);
    request
}

/// Appends a length-delimited field: an embedded message's encoding.
fn field(out: &mut Vec<u8>, tag: u32, encoded: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(encoded.len() as u64, out);
    out.extend_from_slice(encoded);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u8) -> Span {
        Span {
            trace_id: vec![n; 16],
            span_id: vec![n; 8],
            name: format!("span {n}"),
            kind: SPAN_KIND_SERVER,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![KeyValue::new("n", Value::Int(n.into()))],
            ..Span::default()
        }
    }

    #[test]
    fn wrapped_spans_decode_as_the_whole_request_would() {
        let resource = Resource {
            attributes: vec![KeyValue::string("service.name", "pylon")],
        };
        let scope = InstrumentationScope {
            name: "pylon".into(),
            version: "1".into(),
        };
        let spans = [span(1), span(2)];
        let encoded: Vec<_> = spans.iter().map(Message::encode_to_vec).collect();
        let wrapped = export_request(&resource.encode_to_vec(), &scope, &encoded);
        let expected = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans: spans.to_vec(),
                }],
            }],
        };
        assert_eq!(wrapped, expected.encode_to_vec());
        assert_eq!(
            ExportTraceServiceRequest::decode(&wrapped[..]).unwrap(),
            expected
        );
    }
}
