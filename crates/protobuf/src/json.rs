//! Messages to and from JSON, with APISIX's `pb_option` choices, and request parameters
//! (query arguments, path variables) put into a message's JSON by field path.

use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Syntax,
};
use serde_json::{Map, Value};

/// Why a message cannot be made from JSON or read from the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

impl JsonError {
    pub(crate) fn new(message: impl Into<String>) -> JsonError {
        JsonError(message.into())
    }
}

/// A `pb_option` value that cannot be honoured, by its place in the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    pub index: usize,
    pub message: String,
}

/// Whether fields at their default value appear in the JSON of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defaults {
    /// For proto3 messages (where presence is not tracked) they do; for proto2, not.
    Auto,
    Shown,
    Hidden,
}

/// How one plugin turns messages to and from JSON.
#[derive(Debug, Clone)]
pub struct Codec {
    enum_numbers: bool,
    int64_strings: bool,
    json_names: bool,
    defaults: Defaults,
}

impl Default for Codec {
    /// APISIX's defaults: enums by name, 64-bit integers as numbers, defaults shown for proto3,
    /// fields by their proto names.
    fn default() -> Codec {
        Codec {
            enum_numbers: false,
            int64_strings: false,
            json_names: false,
            defaults: Defaults::Auto,
        }
    }
}

impl Codec {
    /// A codec from APISIX's `pb_option` list; later values override earlier ones of the same
    /// kind. Beyond APISIX: `field_as_json_name` (lowerCamelCase names, as the proto3 JSON
    /// mapping has them) and `field_as_proto_name` (the default).
    pub fn from_options<S: AsRef<str>>(options: &[S]) -> Result<Codec, OptionError> {
        let mut codec = Codec::default();
        for (index, option) in options.iter().enumerate() {
            let refuse = |why: &str| OptionError {
                index,
                message: why.to_owned(),
            };
            match option.as_ref() {
                "enum_as_name" => codec.enum_numbers = false,
                "enum_as_value" => codec.enum_numbers = true,
                "int64_as_number" => codec.int64_strings = false,
                "int64_as_string" => codec.int64_strings = true,
                "auto_default_values" => codec.defaults = Defaults::Auto,
                "use_default_values" => codec.defaults = Defaults::Shown,
                "no_default_values" => codec.defaults = Defaults::Hidden,
                "field_as_proto_name" => codec.json_names = false,
                "field_as_json_name" => codec.json_names = true,
                // Hooks are Lua functions run on decoded messages: Pylon has none to run.
                "disable_hooks" => {}
                "int64_as_hexstring" => {
                    return Err(refuse(
                        "`int64_as_hexstring` is not supported: use `int64_as_string`",
                    ))
                }
                "use_default_metatable" | "enable_hooks" => {
                    return Err(refuse(&format!(
                        "`{}` is specific to APISIX's Lua runtime and not supported",
                        option.as_ref()
                    )))
                }
                other => return Err(refuse(&format!("unknown option `{other}`"))),
            }
        }
        Ok(codec)
    }

    /// The wire form of a message of type `desc` written as `json`.
    pub fn encode(&self, desc: &MessageDescriptor, json: &Value) -> Result<Vec<u8>, JsonError> {
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        let message = DynamicMessage::deserialize_with_options(desc.clone(), json, &options)
            .map_err(|e| JsonError(format!("the body does not fit `{}`: {e}", desc.name())))?;
        Ok(message.encode_to_vec())
    }

    /// The JSON of a message of type `desc`, appended to `out`.
    pub fn decode(
        &self,
        desc: &MessageDescriptor,
        wire: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let message = self.message(desc, wire)?;
        let mut serializer = serde_json::Serializer::new(out);
        message
            .serialize_with_options(&mut serializer, &self.serialize_options(desc))
            .map_err(|e| JsonError(e.to_string()))
    }

    /// The JSON of `field` of a message of type `desc`, appended to `out`; a field the
    /// message does not set is its default value (`null` for a message).
    pub fn decode_field(
        &self,
        desc: &MessageDescriptor,
        field: &FieldDescriptor,
        wire: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let message = self.message(desc, wire)?;
        let mut only = DynamicMessage::new(desc.clone());
        if message.has_field(field) {
            only.set_field(field, message.get_field(field).into_owned());
        }
        // Defaults shown, so that the field is there whatever its value (its own fields'
        // defaults show then too).
        let options = self.serialize_options(desc).skip_default_fields(false);
        let json = only
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| JsonError(e.to_string()))?;
        let name = if self.json_names {
            field.json_name()
        } else {
            field.name()
        };
        serde_json::to_writer(out, json.get(name).unwrap_or(&Value::Null))
            .map_err(|e| JsonError(e.to_string()))
    }

    /// The JSON of a message of type `desc`, as a value.
    pub fn decode_value(&self, desc: &MessageDescriptor, wire: &[u8]) -> Result<Value, JsonError> {
        let message = self.message(desc, wire)?;
        message
            .serialize_with_options(serde_json::value::Serializer, &self.serialize_options(desc))
            .map_err(|e| JsonError(e.to_string()))
    }

    fn message(&self, desc: &MessageDescriptor, wire: &[u8]) -> Result<DynamicMessage, JsonError> {
        DynamicMessage::decode(desc.clone(), wire)
            .map_err(|e| JsonError(format!("not a `{}` message: {e}", desc.full_name())))
    }

    fn serialize_options(&self, desc: &MessageDescriptor) -> SerializeOptions {
        let skip_defaults = match self.defaults {
            Defaults::Shown => false,
            Defaults::Hidden => true,
            Defaults::Auto => desc.parent_file().syntax() != Syntax::Proto3,
        };
        SerializeOptions::new()
            .use_enum_numbers(self.enum_numbers)
            .stringify_64_bit_integers(self.int64_strings)
            .use_proto_field_name(!self.json_names)
            .skip_default_fields(skip_defaults)
    }
}

/// Sets the field at `path` (dotted field names, `a.b.c`) of the JSON of a `desc` message to
/// `value`, a request parameter's text, read as the field's type: a number, a boolean, an
/// enum's name or number, a string. A repeated field gets the value appended. `Ok(false)`
/// when no such field exists: parameters that name no field are left out, as APISIX does.
pub fn set_param(
    desc: &MessageDescriptor,
    json: &mut Map<String, Value>,
    path: &str,
    value: &str,
) -> Result<bool, JsonError> {
    let mut desc = desc.clone();
    let mut json = json;
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let Some(field) = field_named(&desc, name) else {
            return Ok(false);
        };
        let key = field.name().to_owned();
        if names.peek().is_none() {
            let parsed = param_value(&field, value)?;
            if field.is_list() {
                let entry = json.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                match entry {
                    Value::Array(items) => items.push(parsed),
                    other => *other = Value::Array(vec![parsed]),
                }
            } else {
                json.insert(key, parsed);
            }
            return Ok(true);
        }
        let Kind::Message(inner) = field.kind() else {
            return Ok(false);
        };
        if field.is_list() || field.is_map() {
            return Ok(false);
        }
        let entry = json.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            unreachable!("made an object just above")
        };
        json = next;
        desc = inner;
    }
    Ok(false)
}

/// A field by its proto name or its JSON (lowerCamelCase) name.
fn field_named(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

fn param_value(field: &FieldDescriptor, text: &str) -> Result<Value, JsonError> {
    let bad = |what: &str| JsonError(format!("`{}`: `{text}` is not {what}", field.name()));
    Ok(match field.kind() {
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::from(text.parse::<i32>().map_err(|_| bad("a 32-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::from(
            text.parse::<u32>()
                .map_err(|_| bad("an unsigned 32-bit integer"))?,
        ),
        Kind::Float | Kind::Double => {
            let number = text.parse::<f64>().map_err(|_| bad("a number"))?;
            serde_json::Number::from_f64(number)
                .map(Value::Number)
                .ok_or_else(|| bad("a finite number"))?
        }
        // 64-bit integers travel as strings in protobuf's JSON mapping; their parse checks them.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            text.parse::<i64>().map_err(|_| bad("a 64-bit integer"))?;
            Value::String(text.to_owned())
        }
        Kind::Uint64 | Kind::Fixed64 => {
            text.parse::<u64>()
                .map_err(|_| bad("an unsigned 64-bit integer"))?;
            Value::String(text.to_owned())
        }
        Kind::Enum(desc) => match text.parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) if desc.get_value_by_name(text).is_some() => Value::String(text.to_owned()),
            Err(_) => return Err(bad(&format!("a value of `{}`", desc.name()))),
        },
        Kind::String | Kind::Bytes => Value::String(text.to_owned()),
        // Well-known types written as strings in JSON (Timestamp, Duration, FieldMask, the
        // wrappers of strings) take the text as it is; their parse checks it.
        Kind::Message(_) => Value::String(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Schema;

    const PROTO: &str = r#"syntax = "proto3";
package t;
enum Colour { RED = 0; BLUE = 1; }
message Inner { int64 big = 1; Colour colour = 2; }
message Outer {
  string name = 1;
  Inner inner = 2;
  repeated int32 counts = 3;
  map<string, int32> tags = 4;
  bool flag = 5;
  int32 unset = 6;
  string display_name = 7;
}
"#;

    fn outer() -> MessageDescriptor {
        Schema::compile("t.proto", PROTO)
            .unwrap()
            .message("t.Outer")
            .unwrap()
    }

    fn round_trip(options: &[&str], input: Value) -> Value {
        let codec = Codec::from_options(options).unwrap();
        let wire = codec.encode(&outer(), &input).unwrap();
        let mut out = Vec::new();
        codec.decode(&outer(), &wire, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn apisix_defaults_give_enum_names_int64_numbers_and_proto3_defaults() {
        let input = json!({"name": "n", "inner": {"big": "9007199254740993", "colour": "BLUE"},
            "counts": [1, 2], "tags": {"a": 1}, "displayName": "d"});
        let out = round_trip(&[], input);
        assert_eq!(out["inner"]["big"], json!(9007199254740993i64));
        assert_eq!(out["inner"]["colour"], "BLUE");
        assert_eq!(out["counts"], json!([1, 2]));
        assert_eq!(out["tags"], json!({"a": 1}));
        assert_eq!(
            (out["flag"].clone(), out["unset"].clone()),
            (json!(false), json!(0))
        );
        assert_eq!(out["display_name"], "d");
    }

    #[test]
    fn one_field_decodes_alone_and_an_unset_one_as_its_default() {
        let codec = Codec::from_options(&["int64_as_string"]).unwrap();
        let wire = codec
            .encode(&outer(), &json!({"inner": {"big": 7}, "counts": [1, 2]}))
            .unwrap();
        let field = |codec: &Codec, name: &str| {
            let desc = outer();
            let mut out = Vec::new();
            let field = desc.get_field_by_name(name).unwrap();
            codec.decode_field(&desc, &field, &wire, &mut out).unwrap();
            serde_json::from_slice::<Value>(&out).unwrap()
        };
        assert_eq!(field(&codec, "inner"), json!({"big": "7", "colour": "RED"}));
        assert_eq!(field(&codec, "counts"), json!([1, 2]));
        assert_eq!(field(&codec, "name"), json!(""), "unset: its default");
        assert_eq!(field(&codec, "tags"), json!({}));
        let json_names = Codec::from_options(&["field_as_json_name"]).unwrap();
        assert_eq!(field(&json_names, "display_name"), json!(""));
    }

    #[test]
    fn pb_options_change_the_json() {
        let input = json!({"inner": {"big": 5, "colour": 1}, "display_name": "d"});
        let options = [
            "enum_as_value",
            "int64_as_string",
            "no_default_values",
            "field_as_json_name",
        ];
        let out = round_trip(&options, input);
        assert_eq!(
            out,
            json!({"inner": {"big": "5", "colour": 1}, "displayName": "d"})
        );
    }

    #[test]
    fn options_that_cannot_be_honoured_are_refused_by_index() {
        let error = Codec::from_options(&["enum_as_name", "int64_as_hexstring"]).unwrap_err();
        assert_eq!(error.index, 1);
        assert!(error.message.contains("int64_as_string"));
        assert_eq!(Codec::from_options(&["enable_hooks"]).unwrap_err().index, 0);
        let error = Codec::from_options(&["nope"]).unwrap_err();
        assert_eq!(error.message, "unknown option `nope`");
    }

    #[test]
    fn a_body_that_does_not_fit_is_an_error() {
        let error = Codec::default()
            .encode(&outer(), &json!({"counts": "x"}))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("the body does not fit `Outer`"),
            "{error}"
        );
    }

    #[test]
    fn params_are_set_by_path_and_read_as_their_field_type() {
        let mut json = Map::new();
        let desc = outer();
        for (path, value) in [
            ("name", "n"),
            ("inner.big", "12"),
            ("inner.colour", "BLUE"),
            ("counts", "1"),
            ("counts", "2"),
            ("flag", "true"),
            ("displayName", "d"),
        ] {
            assert!(set_param(&desc, &mut json, path, value).unwrap(), "{path}");
        }
        assert!(!set_param(&desc, &mut json, "nope", "1").unwrap());
        let json = Value::Object(json);
        assert_eq!(
            json,
            json!({"name": "n", "inner": {"big": "12", "colour": "BLUE"}, "counts": [1, 2],
                "flag": true, "display_name": "d"})
        );
        assert!(Codec::default().encode(&desc, &json).is_ok());
        let error = set_param(&desc, &mut Map::new(), "flag", "maybe").unwrap_err();
        assert_eq!(error.to_string(), "`flag`: `maybe` is not a boolean");
    }
}
