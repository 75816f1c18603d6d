//! A small client of the API, over the Unix socket or TCP (TLS, with a bearer token): what
//! the `dwcp` CLI and the tests use. One connection per request; every step has a timeout.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Request};
use hyper_util::rt::TokioIo;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use dwcp_control::view::ErrorBody;

/// Where the agent's API is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port` in plain HTTP (the metrics endpoint; the API is never served so on TCP).
    Http(String),
    /// The TCP API: `host:port` over TLS, trusting `trust`, with the bearer token to send.
    Https {
        addr: String,
        token: Option<String>,
        trust: TlsTrust,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Http(addr) => write!(f, "http://{addr}"),
            Endpoint::Https { addr, .. } => write!(f, "https://{addr}"),
        }
    }
}

/// The CA certificates a TLS server's chain must lead to (those that signed the API's
/// certificate), read from a PEM file.
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<ClientConfig>,
    file: PathBuf,
}

impl std::fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTrust")
            .field("file", &self.file)
            .finish()
    }
}

impl TlsTrust {
    pub fn from_pem_file(path: &Path) -> Result<TlsTrust, ClientError> {
        let bad = |detail: String| ClientError::Trust {
            path: path.into(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsTrust {
            config: Arc::new(config),
            file: path.into(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {endpoint}: {source} (is dwcp-agent running?)")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("the agent at {endpoint} did not answer within {ms} ms")]
    Timeout { endpoint: String, ms: u64 },
    #[error("talking to the agent at {endpoint}: {detail}")]
    Http { endpoint: String, detail: String },
    /// The agent refused the request; `message` is its explanation.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
    #[error("TLS trust {path}: {detail}")]
    Trust { path: PathBuf, detail: String },
}

/// An answer as received.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

#[derive(Clone, Debug)]
pub struct ApiClient {
    pub endpoint: Endpoint,
    pub timeout: Duration,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl ApiClient {
    pub fn new(endpoint: Endpoint) -> ApiClient {
        ApiClient {
            endpoint,
            timeout: Duration::from_secs(10),
        }
    }

    fn timeout_error(&self) -> ClientError {
        ClientError::Timeout {
            endpoint: self.endpoint.to_string(),
            ms: self.timeout.as_millis() as u64,
        }
    }

    fn http_error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            endpoint: self.endpoint.to_string(),
            detail: e.to_string(),
        }
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let connect_error = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let handshake = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(connect_error)?;
                    self.handshake(stream).await
                }
                Endpoint::Http(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(connect_error)?;
                    self.handshake(stream).await
                }
                Endpoint::Https { addr, trust, .. } => {
                    let host = addr
                        .rsplit_once(':')
                        .map_or(addr.as_str(), |(host, _)| host)
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| self.http_error(format!("server name {host:?}: {e}")))?;
                    let stream = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(connect_error)?;
                    let tls = TlsConnector::from(trust.config.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|e| self.http_error(format!("TLS: {e}")))?;
                    self.handshake(tls).await
                }
            }
        };
        tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| self.timeout_error())?
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, ClientError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.http_error(e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Http(addr) | Endpoint::Https { addr, .. } => addr.clone(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        if let Endpoint::Https {
            token: Some(token), ..
        } = &self.endpoint
        {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let has_body = body.is_some();
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if has_body
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.http_error(e))
    }

    /// Sends a request as given (extra headers, raw body) and returns the answer whatever its
    /// status.
    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let req = self.request(method, path, headers, body)?;
        let mut sender = self.connect().await?;
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.http_error(e))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.http_error(e))?
                .to_bytes()
                .to_vec();
            Ok(RawResponse {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.timeout_error())?
    }

    /// Sends `body` as JSON (if any) and decodes a 2xx answer as `T`; an error answer becomes
    /// [`ClientError::Api`] with the agent's message.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = self.request_raw(method, path, &[], body).await?;
        decode(resp)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>("GET", path, None).await
    }

    /// Follows `/v1/events`, calling `on_event` for each event until it returns false or the
    /// stream ends. Only connecting is bounded by the timeout: the stream may idle (the server
    /// sends keep-alive comments every 15 s).
    pub async fn events(&self, on_event: impl FnMut(SseEvent) -> bool) -> Result<(), ClientError> {
        self.events_at("/v1/events", on_event).await
    }

    /// As [`ApiClient::events`], from `path` (e.g. `/v1/events?owner=video`).
    pub async fn events_at(
        &self,
        path: &str,
        mut on_event: impl FnMut(SseEvent) -> bool,
    ) -> Result<(), ClientError> {
        let req = self.request("GET", path, &[("accept", "text/event-stream")], None)?;
        let mut sender = self.connect().await?;
        let resp = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| self.timeout_error())?
            .map_err(|e| self.http_error(e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.http_error(e))?
                .to_bytes()
                .to_vec();
            return decode::<serde_json::Value>(RawResponse {
                status,
                content_type: None,
                body,
            })
            .map(|_| ());
        }
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_error(e))?;
            if let Some(data) = frame.data_ref() {
                for event in parser.push(&String::from_utf8_lossy(data)) {
                    if !on_event(event) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(resp: RawResponse) -> Result<T, ClientError> {
    if !(200..300).contains(&resp.status) {
        let message = serde_json::from_slice::<ErrorBody>(&resp.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).trim().to_string());
        return Err(ClientError::Api {
            status: resp.status,
            message,
        });
    }
    serde_json::from_slice(&resp.body).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Incremental parser of a `text/event-stream` (the subset the server writes: `event:`,
/// `data:`, comments, blank-line terminated).
#[derive(Default)]
pub struct SseParser {
    pending: String,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &str) -> Vec<SseEvent> {
        self.pending.push_str(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: self.data.join("\n"),
                    });
                    self.data.clear();
                }
                self.event.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
            // Comments (`:`) and other fields are ignored.
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_are_reassembled() {
        let mut p = SseParser::default();
        assert!(p.push(": keep-alive\n\nevent: agent\nda").is_empty());
        let events = p.push("ta: {\"kind\":\"link_up\",\"link\":1}\n\nevent: lagged\n");
        assert_eq!(
            events,
            vec![SseEvent {
                event: "agent".into(),
                data: "{\"kind\":\"link_up\",\"link\":1}".into()
            }]
        );
        let events = p.push("data: {\"lost\":3}\r\n\r\n");
        assert_eq!(events[0].event, "lagged");
        assert_eq!(events[0].data, "{\"lost\":3}");
    }
}
