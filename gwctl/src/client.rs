//! gRPC clients of the control plane, with the bearer token of each API and
//! gRPC failures turned into one readable reason.

use gateway_common::grpc_tls::{
    endpoint, ClientTls, ClientTlsFiles, ClientTlsNames, EndpointError,
};
use gateway_common::tls::PairSettings;
use gateway_proto::v1::admin_client::AdminClient;
use gateway_proto::v1::registry_client::RegistryClient;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Time allowed to open the connection to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a unary call's answer (streams are not limited).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest Admin answer accepted (a topology of a large fleet).
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// Which API a call goes to, and so which token it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Admin API: `GW_ADMIN_TOKEN`.
    Admin,
    /// Registry API: `GW_REGISTRATION_TOKEN`.
    Registry,
}

impl Api {
    /// The environment variable holding this API's token.
    pub fn token_variable(self) -> &'static str {
        match self {
            Api::Admin => "GW_ADMIN_TOKEN",
            Api::Registry => "GW_REGISTRATION_TOKEN",
        }
    }
}

/// Why a control-plane call failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL is not a usable gRPC endpoint.
    #[error("invalid control-plane URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made, or the control plane answered UNAVAILABLE.
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable {
        /// The URL dialled.
        url: String,
        /// The transport's or the server's reason.
        reason: String,
    },
    /// The TLS files cannot be used.
    #[error("{0}")]
    Tls(String),
    /// The token is missing or wrong.
    #[error("{detail}")]
    Unauthenticated {
        /// What to set.
        detail: String,
    },
    /// The control plane refused the request's content.
    #[error("refused by the control plane: {0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("refused by the control plane: {0}")]
    FailedPrecondition(String),
    /// No answer in time.
    #[error("the control plane at {url} did not answer in time")]
    Timeout {
        /// The URL dialled.
        url: String,
    },
    /// Any other gRPC failure.
    #[error("the control plane answered {code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

/// A connection to the control plane, able to build clients of both APIs.
#[derive(Clone)]
pub struct ControlPlane {
    url: String,
    channel: Channel,
    /// TLS without a client certificate: a connection closed under a call
    /// may be a control plane that requires one.
    without_client_certificate: bool,
}

/// Adds `authorization: Bearer <token>` to every call (when a token is set).
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Admin client with its token.
pub type Admin = AdminClient<InterceptedService<Channel, BearerAuth>>;
/// Registry client with its token.
pub type Registry = RegistryClient<InterceptedService<Channel, BearerAuth>>;

impl ControlPlane {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`); an `https://`
    /// URL over TLS with the platform's roots.
    pub async fn connect(url: &str) -> Result<Self, CallError> {
        Self::connect_with(url, ClientTlsFiles::default()).await
    }

    /// Connects to `url` with TLS `files`: an `https://` URL always speaks
    /// TLS (the platform's roots plus the CA file, and the client
    /// certificate when given); files with an `http://` URL are refused.
    pub async fn connect_with(url: &str, files: ClientTlsFiles<'_>) -> Result<Self, CallError> {
        let tls = ClientTls::for_url(url, TLS_NAMES, files).map_err(|e| match e {
            EndpointError::BadUrl { url, reason } => CallError::BadUrl { url, reason },
            e => CallError::Tls(e.to_string()),
        })?;
        let endpoint = endpoint(url, tls.as_ref())
            .map_err(|e| CallError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CallError::Unreachable {
                url: url.to_string(),
                reason: with_tls_hint(error_chain(&e)),
            })?;
        Ok(Self {
            url: url.to_string(),
            channel,
            without_client_certificate: tls.as_ref().is_some_and(|t| !t.has_client_certificate()),
        })
    }

    /// The URL this connection dialled.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An Admin client carrying `$GW_ADMIN_TOKEN`. Topologies and instance
    /// lists of large fleets exceed tonic's 4 MiB default message size.
    pub fn admin(&self) -> Admin {
        AdminClient::with_interceptor(self.channel.clone(), bearer(Api::Admin))
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A Registry client carrying `$GW_REGISTRATION_TOKEN`.
    pub fn registry(&self) -> Registry {
        RegistryClient::with_interceptor(self.channel.clone(), bearer(Api::Registry))
    }

    /// An Admin client carrying an explicit token (e.g. `gwctl dev`'s own).
    pub fn admin_with_token(&self, token: &str) -> Admin {
        let header = format!("Bearer {token}").parse().ok();
        AdminClient::with_interceptor(self.channel.clone(), BearerAuth { header })
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Turns a failed call to `api` into a readable error.
    pub fn explain(&self, api: Api, status: Status) -> CallError {
        match explain(&self.url, api, status) {
            CallError::Unreachable { url, reason }
                if self.without_client_certificate && gateway_common::grpc_tls::closed_by_peer(&reason) =>
            {
                CallError::Unreachable {
                    url,
                    reason: format!("{reason} (a control plane that requires client certificates closes connections without one: give one with --client-cert / --client-key)"),
                }
            }
            other => other,
        }
    }
}

fn bearer(api: Api) -> BearerAuth {
    let header = std::env::var(api.token_variable())
        .ok()
        .filter(|t| !t.is_empty())
        .and_then(|t| format!("Bearer {t}").parse().ok());
    BearerAuth { header }
}

/// Maps a gRPC status to an operator-facing reason.
pub fn explain(url: &str, api: Api, status: Status) -> CallError {
    let message = one_line(status.message());
    let var = api.token_variable();
    // A connection that failed under the call (e.g. a TLS alert once the
    // handshake seemed done) carries its cause as the status' source.
    if let Some(cause) = std::error::Error::source(&status).map(error_chain) {
        if matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ) && !message.to_ascii_lowercase().contains("timeout")
        {
            return CallError::Unreachable {
                url: url.to_string(),
                reason: with_tls_hint(format!("{message}: {cause}")),
            };
        }
    }
    match status.code() {
        Code::Unauthenticated => {
            let token_set = std::env::var(var).is_ok_and(|t| !t.is_empty());
            let detail = if token_set {
                format!("the control plane refused the token in {var}: set {var} to the control plane's token")
            } else {
                format!("{var} is not set: set {var} to the control plane's token")
            };
            CallError::Unauthenticated { detail }
        }
        Code::Unavailable => CallError::Unreachable {
            url: url.to_string(),
            reason: if message.is_empty() {
                "unavailable".into()
            } else {
                with_tls_hint(message)
            },
        },
        Code::InvalidArgument => CallError::InvalidArgument(message),
        Code::NotFound => CallError::NotFound(message),
        Code::FailedPrecondition | Code::AlreadyExists => CallError::FailedPrecondition(message),
        Code::DeadlineExceeded => CallError::Timeout {
            url: url.to_string(),
        },
        // tonic reports its own client-side timeout as CANCELLED "Timeout expired".
        Code::Cancelled if message.to_ascii_lowercase().contains("timeout") => CallError::Timeout {
            url: url.to_string(),
        },
        code => CallError::Other { code, message },
    }
}

/// Names of gwctl's TLS settings, for messages.
const TLS_NAMES: ClientTlsNames = ClientTlsNames {
    url: "--control-plane / GW_CONTROL_PLANE",
    ca_file: "--ca-file / GW_CA_FILE",
    identity: PairSettings {
        cert: "--client-cert / GW_CLIENT_CERT",
        key: "--client-key / GW_CLIENT_KEY",
    },
};

/// `reason` with what to do about a TLS failure it names, if any.
fn with_tls_hint(reason: String) -> String {
    let text = reason.to_ascii_lowercase().replace(['_', ' '], "");
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let hint = if has(&["unknownissuer"]) {
        "the control plane's certificate is not signed by a trusted CA: give its CA with --ca-file / GW_CA_FILE"
    } else if has(&["certificaterequired"]) {
        "the control plane requires a client certificate: give one with --client-cert / --client-key (GW_CLIENT_CERT / GW_CLIENT_KEY)"
    } else if has(&["badcertificate", "unknownca", "decrypterror"]) {
        "the control plane refused the client certificate: it must be signed by the control plane's client CA"
    } else if has(&["certificateexpired"]) {
        "the control plane's certificate has expired"
    } else if has(&["notvalidforname"]) {
        "the control plane's certificate does not name the URL's host"
    } else if has(&["invalidcontenttype", "corruptmessage"]) {
        "the control plane does not speak TLS on this port: check the URL's scheme"
    } else {
        return reason;
    };
    format!("{reason} ({hint})")
}

/// Collapses a multi-line message into one line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error with its sources, on one line (`a: b: c`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    one_line(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_readable_reasons() {
        let url = "http://cp:50051";
        let e = explain(url, Api::Admin, Status::unavailable("redis is down"));
        assert_eq!(
            e.to_string(),
            "cannot reach the control plane at http://cp:50051: redis is down"
        );
        let e = explain(url, Api::Registry, Status::unauthenticated("bad token"));
        assert!(e.to_string().contains("GW_REGISTRATION_TOKEN"), "{e}");
        let e = explain(url, Api::Admin, Status::unauthenticated("bad token"));
        assert!(e.to_string().contains("GW_ADMIN_TOKEN"), "{e}");
        let e = explain(url, Api::Admin, Status::invalid_argument("a\nb"));
        assert_eq!(e.to_string(), "refused by the control plane: a; b");
        let e = explain(url, Api::Admin, Status::deadline_exceeded(""));
        assert!(e.to_string().contains("did not answer in time"));
    }
}
