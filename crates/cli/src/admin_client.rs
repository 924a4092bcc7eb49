//! A client for a node's Admin API: one request per connection, the whole answer read.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const TIMEOUT: Duration = Duration::from_secs(30);

/// An Admin API at `host:port`, with the key to present.
pub struct AdminClient {
    authority: String,
    api_key: String,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON; for an error status, an error carrying APISIX's `error_msg`.
    pub fn json(self) -> anyhow::Result<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the Admin API answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })?;
        if !(200..300).contains(&self.status) {
            match value.get("error_msg").and_then(|m| m.as_str()) {
                Some(message) => bail!("{message}"),
                None => bail!("the Admin API answered {}: {value}", self.status),
            }
        }
        Ok(value)
    }
}

impl AdminClient {
    /// `address` is `host:port`, optionally with an `http://` in front.
    pub fn new(address: &str, api_key: String) -> anyhow::Result<AdminClient> {
        let authority = address.strip_prefix("http://").unwrap_or(address);
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("`{address}` is not an Admin API address (host:port)");
        }
        Ok(AdminClient {
            authority: authority.to_owned(),
            api_key,
        })
    }

    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let exchange = self.exchange(method, path_and_query, body.unwrap_or_default());
        runtime
            .block_on(async { tokio::time::timeout(TIMEOUT, exchange).await })
            .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))
            .and_then(|answer| answer)
            .with_context(|| format!("Admin API at {}: {method} {path_and_query}", self.authority))
    }

    async fn exchange(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, &self.authority)
            .header("X-API-KEY", &self.api_key)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok(Response { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_error_answer_becomes_its_error_msg() {
        assert_eq!(answer(200, "{}").json().unwrap(), serde_json::json!({}));
        let refused = answer(400, r#"{"error_msg":"routes[1].upstream_id: missing"}"#);
        assert_eq!(
            refused.json().unwrap_err().to_string(),
            "routes[1].upstream_id: missing"
        );
        assert_eq!(
            answer(400, r#"{"a":1}"#).json().unwrap_err().to_string(),
            r#"the Admin API answered 400: {"a":1}"#
        );
        assert!(answer(502, "Bad Gateway").json().is_err());
        assert!(AdminClient::new("http://127.0.0.1:9180/x", String::new()).is_err());
        assert!(AdminClient::new("http://127.0.0.1:9180/", String::new()).is_ok());
    }
}
