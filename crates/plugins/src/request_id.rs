//! `request-id`: gives every request an id in a header, for the upstream and (by default)
//! for the client: the one the client sent, or a new one.
//!
//! Ids come from `fastrand`, a per-thread generator that costs a few nanoseconds: an id has
//! to be unique, not unpredictable.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, RequestCtx, ResponseCtx, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "request-id",
    priority: 12015,
    schema: schema_of::<RequestIdConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequestIdConfig {
    /// The header that carries the id, to the upstream and to the client.
    #[serde(default = "default_header_name")]
    header_name: String,
    /// Send the id to the client too, unless the response has the header already.
    #[serde(default = "default_true")]
    include_in_response: bool,
    /// How new ids are made.
    #[serde(default)]
    algorithm: Algorithm,
    /// The ids `range_id` makes.
    #[serde(default)]
    range_id: RangeId,
}

fn default_header_name() -> String {
    "X-Request-Id".into()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Algorithm {
    /// A random UUID (version 4).
    #[default]
    Uuid,
    /// A UUID that starts with the time in milliseconds (version 7), so ids sort by time.
    Uuidv7,
    /// 21 characters of `A-Za-z0-9_-`.
    Nanoid,
    /// `range_id.length` characters of `range_id.char_set`.
    RangeId,
    /// 27 base62 characters: the time in seconds, then 128 random bits.
    Ksuid,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RangeId {
    /// How many characters an id has.
    #[serde(default = "default_length")]
    #[schemars(range(min = 6))]
    length: usize,
    /// The characters ids are made of.
    #[serde(default = "default_char_set")]
    #[schemars(length(min = 6))]
    char_set: String,
}

impl Default for RangeId {
    fn default() -> RangeId {
        RangeId {
            length: default_length(),
            char_set: default_char_set(),
        }
    }
}

fn default_length() -> usize {
    16
}

/// APISIX's default, as it is there (with `G` twice and no `J`), so that the same
/// configuration makes the same kind of ids.
fn default_char_set() -> String {
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIGKLMNOPQRSTUVWXYZ0123456789".into()
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: RequestIdConfig = parse(config)?;
    if config.header_name.is_empty()
        || !config
            .header_name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':')
    {
        return Err(FieldError::new("header_name", "must be a header name"));
    }
    if config.range_id.length < 6 {
        return Err(FieldError::new("range_id.length", "must be at least 6"));
    }
    let char_set: Vec<char> = config.range_id.char_set.chars().collect();
    if char_set.len() < 6 {
        return Err(FieldError::new(
            "range_id.char_set",
            "must have at least 6 characters",
        ));
    }
    if char_set.iter().any(|c| c.is_control()) {
        return Err(FieldError::new(
            "range_id.char_set",
            "must not have control characters",
        ));
    }
    Ok(Arc::new(RequestId {
        header_name: Arc::from(config.header_name),
        include_in_response: config.include_in_response,
        algorithm: config.algorithm,
        length: config.range_id.length,
        char_set,
    }))
}

struct RequestId {
    header_name: Arc<str>,
    include_in_response: bool,
    algorithm: Algorithm,
    length: usize,
    char_set: Vec<char>,
}

/// The request's id, kept for `header_filter`.
struct Id(Arc<str>);

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        if self.include_in_response {
            Phases::REWRITE | Phases::HEADER_FILTER
        } else {
            Phases::REWRITE
        }
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let id: Arc<str> = match ctx.header(&self.header_name) {
            Some(sent) if !sent.is_empty() => Arc::from(sent),
            _ => {
                let id = self.generate();
                ctx.edits.headers.set(&self.header_name, &id);
                id
            }
        };
        if self.include_in_response {
            ctx.set_state(DESCRIPTOR.name, Id(id));
        }
        Step::Continue
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_, '_>) {
        // The upstream's own id, if it sent one, is the one the client gets.
        let present = match ctx.edits.headers.get(&self.header_name) {
            Some(edited) => edited.is_some_and(|v| !v.is_empty()),
            None => ctx
                .headers
                .header(&self.header_name)
                .is_some_and(|v| !v.is_empty()),
        };
        if present {
            return;
        }
        if let Some(Id(id)) = ctx.request.state::<Id>(DESCRIPTOR.name) {
            ctx.edits.headers.set(&self.header_name, id);
        }
    }
}

impl RequestId {
    /// A new id, made straight into the shared string the request's edits and state hold.
    fn generate(&self) -> Arc<str> {
        match self.algorithm {
            Algorithm::Uuid => uuid(fastrand::u128(..), 4),
            Algorithm::Uuidv7 => {
                let millis = now().as_millis() & ((1 << 48) - 1);
                uuid((millis << 80) | (fastrand::u128(..) & ((1 << 80) - 1)), 7)
            }
            Algorithm::Nanoid => {
                const ALPHABET: &[u8; 64] =
                    b"-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
                let id: String = (0..21)
                    .map(|_| ALPHABET[usize::from(fastrand::u8(..) & 63)] as char)
                    .collect();
                Arc::from(id)
            }
            Algorithm::RangeId => {
                let id: String = (0..self.length)
                    .map(|_| self.char_set[fastrand::usize(..self.char_set.len())])
                    .collect();
                Arc::from(id)
            }
            Algorithm::Ksuid => {
                // KSUID's epoch is 2014-05-13, 1.4e9 seconds after Unix's.
                let seconds = now().as_secs().saturating_sub(1_400_000_000) as u32;
                let mut bytes = [0u8; 20];
                bytes[..4].copy_from_slice(&seconds.to_be_bytes());
                bytes[4..].copy_from_slice(&fastrand::u128(..).to_be_bytes());
                Arc::from(base62(bytes))
            }
        }
    }
}

fn now() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// `bits` as a UUID of `version`, with RFC 9562's variant: 32 lowercase hex digits in
/// groups of 8-4-4-4-12. Written digit by digit on the stack: `format!` costs more than
/// everything else the plugin does.
fn uuid(bits: u128, version: u128) -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (bits & !(0xf << 76)) | (version << 76);
    let bits = (bits & !(0b11 << 62)) | (0b10 << 62);
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        // The dashes after bytes 4, 6, 8 and 10: 8-4-4-4-12 digits.
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    // Hex digits and dashes: ASCII.
    Arc::from(std::str::from_utf8(&out).unwrap_or_default())
}

/// 20 bytes as KSUID's 27 base62 digits (`0-9A-Za-z`), most significant first.
fn base62(mut number: [u8; 20]) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 27];
    for slot in out.iter_mut().rev() {
        // One long division of the big-endian number by 62; the remainder is the digit.
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        *slot = DIGITS[remainder as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{RequestEdits, ResponseEdits};
    use serde_json::json;

    use super::*;
    use crate::testing::{build, refusal, TestRequest};

    struct Headers(Option<&'static str>);

    impl pylon_plugin::ResponseHeaders for Headers {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .filter(|_| name.eq_ignore_ascii_case("x-request-id"))
                .map(str::as_bytes)
        }
    }

    /// The request and response edits for one request, the response having `upstream_id`.
    fn run(
        config: Value,
        request: &TestRequest,
        upstream_id: Option<&'static str>,
    ) -> (RequestEdits, ResponseEdits) {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        assert!(matches!(plugin.rewrite(&mut ctx), Step::Continue));
        let mut response = ResponseEdits::default();
        if plugin.phases().has(pylon_plugin::Phase::HeaderFilter) {
            plugin.header_filter(&mut ResponseCtx {
                request: &ctx,
                status: 200,
                own_status: 200,
                headers: &Headers(upstream_id),
                edits: &mut response,
            });
        }
        (ctx.edits, response)
    }

    fn ids(config: Value) -> Vec<String> {
        (0..50)
            .map(|_| {
                let (edits, _) = run(config.clone(), &TestRequest::get("/"), None);
                edits
                    .headers
                    .get("x-request-id")
                    .flatten()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn a_new_id_goes_upstream_and_to_the_client() {
        let (request, response) = run(json!({}), &TestRequest::get("/"), None);
        let id = request.headers.get("X-Request-Id").flatten().unwrap();
        assert_eq!(response.headers.get("x-request-id"), Some(Some(id)));
    }

    #[test]
    fn the_clients_id_is_kept_and_the_upstreams_wins_in_the_response() {
        let sent = TestRequest::get("/").header("X-Request-Id", "from-client");
        let (request, response) = run(json!({}), &sent, None);
        assert!(request.headers.is_empty());
        assert_eq!(
            response.headers.get("x-request-id"),
            Some(Some("from-client"))
        );
        let (_, response) = run(json!({}), &sent, Some("from-upstream"));
        assert!(response.is_empty());
        let empty = TestRequest::get("/").header("X-Request-Id", "");
        let (request, _) = run(json!({}), &empty, None);
        assert!(request
            .headers
            .get("x-request-id")
            .flatten()
            .is_some_and(|id| !id.is_empty()));
    }

    #[test]
    fn the_header_name_and_response_are_configurable() {
        let config = json!({"header_name": "X-Trace", "include_in_response": false});
        let (request, response) = run(config, &TestRequest::get("/"), None);
        assert!(request.headers.get("x-trace").is_some());
        assert!(response.is_empty());
    }

    #[test]
    fn every_algorithm_makes_distinct_ids_of_its_shape() {
        let shape = |config: Value, check: &dyn Fn(&str) -> bool| {
            let ids = ids(config.clone());
            assert!(ids.iter().all(|id| check(id)), "{config}: {ids:?}");
            let distinct: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(distinct.len(), ids.len(), "{config}");
        };
        let uuid_of = |version: char| {
            move |id: &str| {
                id.len() == 36
                    && id.chars().nth(14) == Some(version)
                    && "89ab".contains(id.chars().nth(19).unwrap())
                    && id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
            }
        };
        shape(json!({}), &uuid_of('4'));
        shape(json!({"algorithm": "uuidv7"}), &uuid_of('7'));
        shape(json!({"algorithm": "nanoid"}), &|id| {
            id.len() == 21
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        shape(
            json!({"algorithm": "range_id", "range_id": {"length": 8, "char_set": "abcdef"}}),
            &|id| id.len() == 8 && id.bytes().all(|b| (b'a'..=b'f').contains(&b)),
        );
        shape(json!({"algorithm": "range_id"}), &|id| {
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        shape(json!({"algorithm": "ksuid"}), &|id| {
            id.len() == 27 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    }

    #[test]
    fn uuid_digits_are_the_bits_with_version_and_variant() {
        let bits = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
        assert_eq!(&*uuid(bits, 4), "01234567-89ab-4def-8123-456789abcdef");
        assert_eq!(&*uuid(u128::MAX, 7), "ffffffff-ffff-7fff-bfff-ffffffffffff");
    }

    #[test]
    fn ksuid_digits_are_base62_of_the_bytes() {
        assert_eq!(base62([0; 20]), "0".repeat(27));
        assert_eq!(base62([0xff; 20]), "aWgEPTl1tmebfsQzFP4bxwgy80V");
        let mut small = [0; 20];
        small[19] = 61;
        assert_eq!(base62(small), format!("{}z", "0".repeat(26)));
        small[19] = 62;
        assert_eq!(base62(small), format!("{}10", "0".repeat(25)));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let path = |config| refusal(&DESCRIPTOR, config).path;
        assert_eq!(path(json!({"algorithm": "snowflake"})), "algorithm");
        assert_eq!(path(json!({"range_id": {"length": 5}})), "range_id.length");
        assert_eq!(
            path(json!({"range_id": {"char_set": "abc"}})),
            "range_id.char_set"
        );
        assert_eq!(path(json!({"header_name": "X Id"})), "header_name");
    }
}
