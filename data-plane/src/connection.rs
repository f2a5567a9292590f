//! What the edge learnt about the connection a request came on, handed to
//! the layers above as a request extension: the HTTPS listener sets a
//! [`TlsConnection`] on every request of a TLS connection, a plain
//! connection sets nothing. Forwarding headers and the client-certificate
//! policy read it from there, knowing nothing of TLS itself.

use http::{HeaderValue, Request};
use std::sync::Arc;

/// A request came over TLS: the listener's port and the verified client
/// certificate's subject, made once per connection and shared by its
/// requests (cloning is one reference count).
#[derive(Debug, Clone)]
pub struct TlsConnection(Arc<TlsFacts>);

#[derive(Debug)]
struct TlsFacts {
    port: HeaderValue,
    client_subject: Option<HeaderValue>,
}

impl TlsConnection {
    /// The facts of a connection accepted on the TLS listener at `port`,
    /// whose client presented a certificate the gateway verified with
    /// `client_subject` (RFC 4514), if any.
    pub fn new(port: u16, client_subject: Option<HeaderValue>) -> Self {
        Self(Arc::new(TlsFacts {
            port: HeaderValue::from(port),
            client_subject,
        }))
    }

    /// The TLS listener's port, as `x-forwarded-port` carries it.
    pub fn port(&self) -> &HeaderValue {
        &self.0.port
    }

    /// Subject (RFC 4514) of the client certificate verified during the
    /// handshake; `None` when the client presented none.
    pub fn client_subject(&self) -> Option<&HeaderValue> {
        self.0.client_subject.as_ref()
    }

    /// The TLS facts of `req`, if it came over TLS.
    pub fn of<B>(req: &Request<B>) -> Option<&TlsConnection> {
        req.extensions().get::<TlsConnection>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_travel_as_a_request_extension() {
        let mut req = Request::new(());
        assert!(TlsConnection::of(&req).is_none());
        let subject = HeaderValue::from_static("CN=partner,O=Acme");
        req.extensions_mut()
            .insert(TlsConnection::new(8443, Some(subject)));
        let tls = TlsConnection::of(&req).unwrap();
        assert_eq!(tls.port(), "8443");
        assert_eq!(tls.client_subject().unwrap(), "CN=partner,O=Acme");
    }
}
