//! Protobuf at run time, for gRPC transcoding: a `protos` resource's `content` compiled into
//! a descriptor pool in pure Rust (protox, no `protoc`), messages turned to and from JSON by
//! that pool (prost-reflect), gRPC's message framing and status codes, and the
//! `google.api.http` rules that bind methods to HTTP paths.
//!
//! A proto is compiled once per version of its resource and shared by every plugin that uses
//! it; nothing here is done per request but the encoding of one message each way.
#![forbid(unsafe_code)]

mod grpc;
mod http_rule;
mod json;

use std::sync::Arc;

use base64::Engine;
use miette::Diagnostic;
use prost_reflect::{DescriptorPool, ServiceDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

pub use grpc::{code_of_http_status, frame, http_status, status_name, Deframer, FrameError};
pub use http_rule::{Binding, Bound, RuleError};
pub use json::{set_param, Codec, JsonError, OptionError};
pub use prost_reflect::{FieldDescriptor, MessageDescriptor, MethodDescriptor};

/// The `google.api` files a proto may import for HTTP annotations, written from the public
/// HttpRule specification.
const GOOGLE_API: [(&str, &str); 2] = [
    (
        "google/api/http.proto",
        include_str!("google/api/http.proto"),
    ),
    (
        "google/api/annotations.proto",
        include_str!("google/api/annotations.proto"),
    ),
];

/// A compiled `protos` resource: every message, service and method it defines (with those of
/// the files it imports).
#[derive(Debug, Clone)]
pub struct Schema {
    pool: DescriptorPool,
}

/// Why a proto's content does not compile, located in it when the compiler says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(String);

/// Why a service or method cannot be found in a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("service `{0}` is not defined in the proto")]
    NoService(String),
    #[error("method `{method}` is not defined in service `{service}`")]
    NoMethod { service: String, method: String },
}

impl Schema {
    /// Compiles `content`: the text of one `.proto` file, or a base64-encoded
    /// `FileDescriptorSet` (what `protoc --include_imports -o` writes, for protos made of
    /// several files). `name` is the file name errors are located in (`<id>.proto`).
    ///
    /// A `.proto` text may import the well-known types (`google/protobuf/*.proto`) and
    /// `google/api/annotations.proto`; other imports go through a descriptor set.
    pub fn compile(name: &str, content: &str) -> Result<Arc<Schema>, CompileError> {
        let pool = if looks_like_base64(content) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| CompileError(format!("not a valid base64 descriptor set: {e}")))?;
            DescriptorPool::decode(bytes.as_slice())
                .map_err(|e| CompileError(format!("not a valid descriptor set: {e}")))?
        } else {
            compile_source(name, content)?
        };
        Ok(Arc::new(Schema { pool }))
    }

    pub fn service(&self, service: &str) -> Result<ServiceDescriptor, LookupError> {
        self.pool
            .get_service_by_name(service)
            .ok_or_else(|| LookupError::NoService(service.to_owned()))
    }

    /// `method` of `service` (its full name, `package.Service`).
    pub fn method(&self, service: &str, method: &str) -> Result<MethodDescriptor, LookupError> {
        self.service(service)?
            .methods()
            .find(|m| m.name() == method)
            .ok_or_else(|| LookupError::NoMethod {
                service: service.to_owned(),
                method: method.to_owned(),
            })
    }

    /// A message type by its full name (`google.rpc.Status`).
    pub fn message(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }
}

/// A descriptor set in base64 has none of the spaces, semicolons and braces every `.proto`
/// text has.
fn looks_like_base64(content: &str) -> bool {
    let content = content.trim();
    !content.is_empty()
        && content
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
}

fn compile_source(name: &str, content: &str) -> Result<DescriptorPool, CompileError> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(InMemory {
        name: name.to_owned(),
        content: content.to_owned(),
    });
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    match compiler.open_file(name) {
        Ok(_) => Ok(compiler.descriptor_pool()),
        Err(error) => Err(CompileError(located(name, content, &error))),
    }
}

/// The compiler's message, prefixed with `file:line:col` when it points into `content`.
fn located(name: &str, content: &str, error: &protox::Error) -> String {
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let in_content = error.file().is_none_or(|file| file == name);
    match offset.filter(|_| in_content) {
        Some(offset) => {
            let before = &content[..offset.min(content.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{name}:{line}:{column}: {error}")
        }
        None => format!("{name}: {error}"),
    }
}

/// The proto being compiled and the `google.api` files, by import name.
struct InMemory {
    name: String,
    content: String,
}

impl FileResolver for InMemory {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == self.name {
            return File::from_source(name, &self.content);
        }
        match GOOGLE_API.iter().find(|(file, _)| *file == name) {
            Some((file, source)) => File::from_source(file, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREETER: &str = r#"syntax = "proto3";
package hello;
service Greeter { rpc SayHello (HelloRequest) returns (HelloReply); }
message HelloRequest { string name = 1; }
message HelloReply { string message = 1; }
"#;

    #[test]
    fn a_proto_text_compiles_and_its_methods_are_found() {
        let schema = Schema::compile("1.proto", GREETER).unwrap();
        let method = schema.method("hello.Greeter", "SayHello").unwrap();
        assert_eq!(method.input().full_name(), "hello.HelloRequest");
        assert_eq!(
            schema
                .method("hello.Greeter", "Nope")
                .unwrap_err()
                .to_string(),
            "method `Nope` is not defined in service `hello.Greeter`"
        );
        assert!(matches!(
            schema.service("Greeter"),
            Err(LookupError::NoService(_))
        ));
    }

    #[test]
    fn a_compile_error_is_located_by_line_and_column() {
        let broken = "syntax = \"proto3\";\npackage p;\nmessage M {\n  strin name = 1;\n}\n";
        let error = Schema::compile("7.proto", broken).unwrap_err().to_string();
        assert!(error.starts_with("7.proto:4:3: "), "{error}");
        let error = Schema::compile("7.proto", "syntax = \"proto3\";\nmessage M { int32 a = 1 }")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("7.proto:2:"), "{error}");
    }

    #[test]
    fn a_descriptor_set_in_base64_is_read_as_one() {
        let source = Schema::compile("1.proto", GREETER).unwrap();
        let set = source.pool.encode_to_vec();
        let encoded = base64::engine::general_purpose::STANDARD.encode(set);
        let schema = Schema::compile("1.proto", &encoded).unwrap();
        assert!(schema.method("hello.Greeter", "SayHello").is_ok());
        let error = Schema::compile("1.proto", "bm90IGEgc2V0").unwrap_err();
        assert!(error.to_string().starts_with("not a valid descriptor set"));
    }

    #[test]
    fn well_known_types_and_http_annotations_import() {
        let annotated = r#"syntax = "proto3";
package a;
import "google/api/annotations.proto";
import "google/protobuf/timestamp.proto";
service S {
  rpc Get (Req) returns (google.protobuf.Timestamp) { option (google.api.http) = { get: "/v1/{id}" }; }
}
message Req { string id = 1; }
"#;
        let schema = Schema::compile("a.proto", annotated).unwrap();
        assert!(schema.method("a.S", "Get").is_ok());
        let error = Schema::compile("a.proto", "syntax = \"proto3\";\nimport \"other.proto\";")
            .unwrap_err()
            .to_string();
        assert!(error.contains("other.proto"), "{error}");
    }
}
