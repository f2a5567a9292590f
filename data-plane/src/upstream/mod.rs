//! The service side of the gateway: balancing over instances, circuit
//! breaking, outlier detection, retries and deadlines, connection pools and
//! the HTTP/1.1 exchange, behind one attempt function. It knows nothing of
//! route policies.

pub mod attempt;
pub mod balancer;
pub mod breaker;
pub mod call;
pub mod deadline;
pub mod h1;
pub mod maglev;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod service;
pub mod stream;
pub mod tls;
