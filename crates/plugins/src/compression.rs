//! `gzip` and `brotli`: compress responses for clients that ask (`Accept-Encoding`), as APISIX's
//! plugins of those names. The body is compressed as it flows, piece by piece, never held
//! whole. A response already encoded, of another type, shorter than `min_length`, without a
//! body (`HEAD`, 204, 304), partial (206) or marked `no-transform` is left alone.

use std::io::Write;
use std::sync::Arc;

use brotli::enc::backward_references::BrotliEncoderMode;
use brotli::enc::BrotliEncoderParams;
use flate2::write::GzEncoder;
use flate2::Compression;
use pylon_model::FieldError;
use pylon_plugin::{BodyFilter, Phases, Plugin, ResponseCtx, ResponseHeaders};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::header_ops::is_identity;

pub(crate) const GZIP: Descriptor = Descriptor {
    name: "gzip",
    priority: 995,
    schema: schema_of::<GzipConfig>,
    build: build_gzip,
    credential: None,
    metadata: None,
};

pub(crate) const BROTLI: Descriptor = Descriptor {
    name: "brotli",
    priority: 996,
    schema: schema_of::<BrotliConfig>,
    build: build_brotli,
    credential: None,
    metadata: None,
};

/// The response types to compress: a list, or `"*"` for every type.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Types {
    List(Vec<String>),
    Any(String),
}

fn default_types() -> Types {
    Types::List(vec!["text/html".to_owned()])
}

fn default_min_length() -> u64 {
    20
}

fn default_http_version() -> f64 {
    1.1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GzipConfig {
    #[serde(default = "default_types")]
    types: Types,
    /// Responses whose `Content-Length` is below this are sent as they are.
    #[serde(default = "default_min_length")]
    min_length: u64,
    /// 1 (fastest) to 9 (smallest).
    #[serde(default = "default_gzip_level")]
    #[schemars(range(min = 1, max = 9))]
    comp_level: u32,
    /// The lowest request HTTP version whose responses are compressed (1.1 or 1.0).
    #[serde(default = "default_http_version")]
    http_version: f64,
    /// nginx's buffer settings, accepted for APISIX's configurations: the body streams
    /// through one encoder here.
    buffers: Option<Value>,
    /// Add `Vary: Accept-Encoding`.
    #[serde(default = "yes")]
    vary: bool,
}

fn default_gzip_level() -> u32 {
    1
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BrotliConfig {
    #[serde(default = "default_types")]
    types: Types,
    #[serde(default = "default_min_length")]
    min_length: u64,
    /// 0 (fastest) to 11 (smallest).
    #[serde(default = "default_brotli_level")]
    #[schemars(range(max = 11))]
    comp_level: u32,
    /// 0 generic, 1 text, 2 font.
    #[serde(default)]
    #[schemars(range(max = 2))]
    mode: u32,
    /// The window, as a power of two: 10 to 24, or 0 for the encoder's choice.
    #[serde(default = "default_lgwin")]
    lgwin: u32,
    /// The input block, as a power of two: 16 to 24, or 0 for the encoder's choice.
    #[serde(default)]
    lgblock: u32,
    #[serde(default = "default_http_version")]
    http_version: f64,
    #[serde(default = "yes")]
    vary: bool,
}

fn default_brotli_level() -> u32 {
    6
}

fn default_lgwin() -> u32 {
    19
}

/// What a compressing plugin decides by, whichever coding it applies.
struct Settings {
    /// `None`: every type.
    types: Option<Vec<String>>,
    min_length: u64,
    /// Requests of HTTP/1.0 get compressed responses too.
    http10: bool,
    vary: bool,
}

impl Settings {
    fn new(
        types: Types,
        min_length: u64,
        http_version: f64,
        vary: bool,
    ) -> Result<Self, FieldError> {
        let types = match types {
            Types::Any(any) if any == "*" => None,
            Types::Any(_) => {
                return Err(FieldError::new("types", "must be a list of types or \"*\""))
            }
            Types::List(list) if list.is_empty() => {
                return Err(FieldError::new("types", "must not be empty"))
            }
            Types::List(list) => Some(list.iter().map(|t| t.to_ascii_lowercase()).collect()),
        };
        if http_version != 1.1 && http_version != 1.0 {
            return Err(FieldError::new("http_version", "must be 1.1 or 1.0"));
        }
        Ok(Self {
            types,
            min_length,
            http10: http_version == 1.0,
            vary,
        })
    }

    /// Whether this response is one to encode with `coding`, for a client that accepts it.
    fn applies(&self, ctx: &ResponseCtx<'_, '_>, coding: &str) -> bool {
        let request = ctx.request;
        let method = request.method();
        let protocol = request.var("server_protocol");
        let headers = ctx.headers;
        let header = |name: &str| header_text(ctx, headers, name);
        !(method == "HEAD"
            || matches!(ctx.status, 100..=199 | 204 | 206 | 304)
            || (!self.http10 && protocol.as_deref() == Some("HTTP/1.0"))
            || header("content-encoding").is_some_and(|c| !c.eq_ignore_ascii_case("identity"))
            || header("content-range").is_some()
            || header("cache-control").is_some_and(|c| has_token(&c, "no-transform")))
            && accepts(request.header("accept-encoding").as_deref(), coding)
            && header("content-length")
                .is_none_or(|n| n.trim().parse::<u64>().is_ok_and(|n| n >= self.min_length))
            && self.types.as_ref().is_none_or(|types| {
                let content_type = header("content-type").unwrap_or_default();
                let essence = content_type.split(';').next().unwrap_or("").trim();
                types.iter().any(|t| t.eq_ignore_ascii_case(essence))
            })
    }

    /// The head of an encoded response: its coding, `Vary`, no length (it changes), and a
    /// weak validator (the bytes are no longer the upstream's).
    fn edit_head(&self, ctx: &mut ResponseCtx<'_, '_>, coding: &'static str) {
        let etag = header_text(ctx, ctx.headers, "etag");
        let edits = &mut ctx.edits.headers;
        edits.set("Content-Encoding", coding);
        edits.remove("Content-Length");
        if self.vary {
            edits.add("Vary", "Accept-Encoding");
        }
        if let Some(etag) = etag.filter(|e| !e.starts_with("W/")) {
            edits.set("ETag", format!("W/{etag}"));
        }
    }
}

/// A response header as it goes out: the edits made so far over the upstream's.
fn header_text(
    ctx: &ResponseCtx<'_, '_>,
    headers: &dyn ResponseHeaders,
    name: &str,
) -> Option<String> {
    match ctx.edits.headers.get(name) {
        Some(edited) => edited.map(str::to_owned),
        None => headers
            .header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned()),
    }
}

fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `Accept-Encoding` admits `coding`: named (or `*`) with a weight above 0.
fn accepts(accept_encoding: Option<&str>, coding: &str) -> bool {
    let Some(list) = accept_encoding else {
        return false;
    };
    let mut star = None;
    for item in list.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return weight > 0.0;
        }
        if name == "*" {
            star = Some(weight > 0.0);
        }
    }
    star.unwrap_or(false)
}

fn build_gzip(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: GzipConfig = parse(config)?;
    if !(1..=9).contains(&config.comp_level) {
        return Err(FieldError::new("comp_level", "must be 1..9"));
    }
    let _ = config.buffers;
    let settings = Settings::new(
        config.types,
        config.min_length,
        config.http_version,
        config.vary,
    )?;
    Ok(Arc::new(Compress {
        settings,
        coding: Coding::Gzip(config.comp_level),
    }))
}

fn build_brotli(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: BrotliConfig = parse(config)?;
    if config.comp_level > 11 {
        return Err(FieldError::new("comp_level", "must be 0..11"));
    }
    let mode = match config.mode {
        0 => BrotliEncoderMode::BROTLI_MODE_GENERIC,
        1 => BrotliEncoderMode::BROTLI_MODE_TEXT,
        2 => BrotliEncoderMode::BROTLI_MODE_FONT,
        _ => {
            return Err(FieldError::new(
                "mode",
                "must be 0 (generic), 1 (text) or 2 (font)",
            ))
        }
    };
    if config.lgwin != 0 && !(10..=24).contains(&config.lgwin) {
        return Err(FieldError::new("lgwin", "must be 0 or 10..24"));
    }
    if config.lgblock != 0 && !(16..=24).contains(&config.lgblock) {
        return Err(FieldError::new("lgblock", "must be 0 or 16..24"));
    }
    let settings = Settings::new(
        config.types,
        config.min_length,
        config.http_version,
        config.vary,
    )?;
    let defaults = BrotliEncoderParams::default();
    let params = BrotliEncoderParams {
        quality: config.comp_level as i32,
        mode,
        lgwin: match config.lgwin {
            0 => defaults.lgwin,
            lgwin => lgwin as i32,
        },
        lgblock: config.lgblock as i32,
        ..defaults
    };
    Ok(Arc::new(Compress {
        settings,
        coding: Coding::Brotli(Arc::new(params)),
    }))
}

enum Coding {
    /// The level.
    Gzip(u32),
    Brotli(Arc<BrotliEncoderParams>),
}

impl Coding {
    /// A new encoder, for one response.
    fn encoder(&self) -> Encoder {
        match self {
            Coding::Gzip(level) => {
                let gz = GzEncoder::new(Vec::new(), Compression::new(*level));
                Encoder::Gzip(Box::new(gz))
            }
            Coding::Brotli(params) => {
                let br = brotli::CompressorWriter::with_params(Vec::new(), 4096, params);
                Encoder::Brotli(Box::new(br))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Coding::Gzip(_) => "gzip",
            Coding::Brotli(_) => "br",
        }
    }
}

struct Compress {
    settings: Settings,
    coding: Coding,
}

impl Plugin for Compress {
    fn name(&self) -> &'static str {
        match self.coding {
            Coding::Gzip(_) => GZIP.name,
            Coding::Brotli(_) => BROTLI.name,
        }
    }

    fn phases(&self) -> Phases {
        Phases::HEADER_FILTER | Phases::BODY_FILTER
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_, '_>) {
        // With `brotli` and `gzip` both on a route, the first to run (brotli) encodes when
        // the client takes it; the other then finds the response encoded.
        if self.settings.applies(ctx, self.coding.name()) {
            self.settings.edit_head(ctx, self.coding.name());
        }
    }

    fn body_filter(&self, ctx: &ResponseCtx<'_, '_>) -> Option<Box<dyn BodyFilter>> {
        // Only the body whose head this plugin encoded.
        let claimed = ctx.edits.headers.get("content-encoding") == Some(Some(self.coding.name()))
            && is_identity(ctx.headers);
        claimed.then(|| {
            let encoder = self.coding.encoder();
            Box::new(Encoding(Some(encoder))) as Box<dyn BodyFilter>
        })
    }
}

enum Encoder {
    Gzip(Box<GzEncoder<Vec<u8>>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

/// One response's encoder: each piece in, whatever it has produced out; the rest at the end.
struct Encoding(Option<Encoder>);

impl BodyFilter for Encoding {
    fn filter(&mut self, piece: &mut Vec<u8>, end: bool) {
        let Some(encoder) = self.0.as_mut() else {
            piece.clear();
            return;
        };
        // Writing into a `Vec` cannot fail.
        let produced = match encoder {
            Encoder::Gzip(gz) => {
                let _ = gz.write_all(piece);
                gz.get_mut()
            }
            Encoder::Brotli(br) => {
                let _ = br.write_all(piece);
                br.get_mut()
            }
        };
        let mut out = std::mem::take(produced);
        if end {
            let rest = match self.0.take() {
                Some(Encoder::Gzip(gz)) => gz.finish().unwrap_or_default(),
                Some(Encoder::Brotli(br)) => br.into_inner(),
                None => Vec::new(),
            };
            out.extend_from_slice(&rest);
        }
        *piece = out;
    }

    fn encodes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::refusal;

    #[test]
    fn accept_encoding_weights_decide() {
        assert!(accepts(Some("gzip, deflate, br"), "gzip"));
        assert!(accepts(Some("br;q=1.0, gzip;q=0.5"), "br"));
        assert!(!accepts(Some("gzip;q=0"), "gzip"));
        assert!(!accepts(Some("identity"), "gzip"));
        assert!(accepts(Some("*"), "br"));
        assert!(!accepts(Some("*, gzip;q=0"), "gzip"));
        assert!(!accepts(None, "gzip"));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        for (descriptor, config, expected) in [
            (&GZIP, json!({"comp_level": 10}), "comp_level: must be 1..9"),
            (&GZIP, json!({"types": []}), "types: must not be empty"),
            (
                &GZIP,
                json!({"types": "text/html"}),
                "types: must be a list of types or \"*\"",
            ),
            (
                &GZIP,
                json!({"http_version": 2}),
                "http_version: must be 1.1 or 1.0",
            ),
            (
                &BROTLI,
                json!({"comp_level": 12}),
                "comp_level: must be 0..11",
            ),
            (
                &BROTLI,
                json!({"mode": 3}),
                "mode: must be 0 (generic), 1 (text) or 2 (font)",
            ),
            (&BROTLI, json!({"lgwin": 9}), "lgwin: must be 0 or 10..24"),
            (
                &BROTLI,
                json!({"lgblock": 25}),
                "lgblock: must be 0 or 16..24",
            ),
        ] {
            assert_eq!(refusal(descriptor, config).to_string(), expected);
        }
    }

    /// The body, in pieces, through one encoder.
    fn encoded(coding: &Coding, pieces: &[&[u8]]) -> Vec<u8> {
        let encoder = coding.encoder();
        let mut filter = Encoding(Some(encoder));
        let mut out = Vec::new();
        for piece in pieces {
            let mut piece = piece.to_vec();
            filter.filter(&mut piece, false);
            out.extend_from_slice(&piece);
        }
        let mut last = Vec::new();
        filter.filter(&mut last, true);
        out.extend_from_slice(&last);
        out
    }

    #[test]
    fn a_body_in_pieces_decodes_to_itself() {
        let body: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        let pieces: Vec<&[u8]> = body.chunks(3_000).collect();
        let gz = encoded(&Coding::Gzip(1), &pieces);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
        assert!(gz.len() < body.len() / 2, "{} of {}", gz.len(), body.len());

        let params = Arc::new(BrotliEncoderParams::default());
        let br = encoded(&Coding::Brotli(params), &pieces);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut brotli::Decompressor::new(&br[..], 4096), &mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
    }
}
