//! The seam between the exchange and the network: one [`Attempt`] on one deployment, carried by a
//! [`Transport`] (the Pingora one is in `upstream.rs`; the exchange's unit tests script their own),
//! ending in a response or a classified [`Failed`]. A leaf under both `exchange` and `upstream`, so
//! neither imports the other.

use crate::balancer::{Deployment, Outcome};
use crate::headers::Returned;
use crate::wire::UpstreamHead;
use bytes::Bytes;
use leaky_filters::Rejection;
use std::future::Future;
use std::time::Duration;

/// One attempt on one deployment: the head and body to send, and how long to wait for the answer.
pub struct Attempt<'a> {
    pub deployment: &'a Deployment,
    /// Connect timeout when the route overrides the provider's.
    pub connect: Option<Duration>,
    /// From request sent to response header, already capped by the time left.
    pub first_byte: Duration,
    pub head: &'a UpstreamHead,
    pub body: &'a Bytes,
    /// The answer's headers that go back to the caller: a successful answer's others are not read.
    pub returned: Returned<'a>,
}

/// A failed attempt: what kind of failure (for the breaker and the retry policy) and the error the
/// client gets if nothing else answers.
pub struct Failed {
    pub outcome: Outcome,
    pub rejection: Rejection,
}

/// How one attempt reaches a deployment: send the request, return once the response header is in
/// (the body is read by the caller of the exchange), or a classified failure.
pub trait Transport: Sync {
    type Response: Send;

    fn send(
        &self,
        attempt: Attempt<'_>,
    ) -> impl Future<Output = Result<Self::Response, Failed>> + Send;

    /// The response's status and headers (`None`: the upstream sent none; counted as a 502).
    fn head(response: &Self::Response) -> Option<&http::response::Parts>;
}
