//! The response body type wikigate serves: bytes it holds, or an upstream body it streams.
//!
//! A closed enum instead of a boxed trait object, so that answering from memory costs no
//! allocation beyond the `Bytes` handle itself.
//!
//! Invariant: a streamed upstream body never outlives the request's deadline; when the deadline
//! passes mid-body the stream ends with an error, which makes hyper abort the response (the
//! client sees a truncated message, never a silently shortened "complete" one).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a [`Body`] can end with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum Body {
    /// A body held in memory; `None` once it was sent (or for an empty body).
    Full(Option<Bytes>),
    /// An upstream body streamed through under a deadline.
    Upstream(UpstreamBody),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn empty() -> Self {
        Body::Full(None)
    }

    /// Streams `inner` until `deadline`.
    pub fn upstream(inner: Incoming, deadline: Instant) -> Self {
        Body::upstream_after(Bytes::new(), inner, deadline)
    }

    /// Sends `prefix` (already read from `inner`), then streams the rest of `inner`.
    pub fn upstream_after(prefix: Bytes, inner: Incoming, deadline: Instant) -> Self {
        Body::Upstream(UpstreamBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }
}

#[derive(Debug)]
pub struct UpstreamBody {
    prefix: Option<Bytes>,
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

/// The upstream body did not finish before the request's deadline.
#[derive(Debug, thiserror::Error)]
#[error("upstream body did not finish within the request deadline")]
pub(crate) struct BodyDeadline;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Upstream(body) => {
                if let Some(prefix) = body.prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                if let Poll::Ready(frame) = Pin::new(&mut body.inner).poll_frame(cx) {
                    return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
                }
                match body.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyDeadline.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Upstream(body) => body.prefix.is_none() && body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Upstream(body) => {
                let prefix = body.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = body.inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + prefix);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
        }
    }
}
