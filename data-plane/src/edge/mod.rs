//! The client side of the gateway: the accept and serve loop, connection
//! settings, TLS on the HTTPS listener, request framing and screening, the
//! client's address, request ids, the gateway's own error responses and
//! the graceful shutdown. It knows nothing of routes or their policies.

pub mod errors;
pub mod forwarded;
pub mod framing;
pub mod linger;
pub mod request_id;
pub mod screen;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod transport;
