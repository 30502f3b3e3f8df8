//! The response body type wikigate serves: bytes it holds, or an upstream body it streams.
//!
//! A closed enum instead of a boxed trait object, so that answering from memory costs no
//! allocation beyond the `Bytes` handle itself.
//!
//! Invariants: a streamed upstream body never outlives the request's deadline; when the deadline
//! passes mid-body the stream ends with an error, which makes hyper abort the response (the
//! client sees a truncated message, never a silently shortened "complete" one). An upstream
//! body ([`Held`]) keeps what its exchange holds (its place upstream) until the body has ended,
//! broken off or been dropped — never only until its head arrived, as Envoy counts a request
//! active until its stream ends.

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
    /// An upstream body streamed through under a deadline (boxed: a hit's answer, which
    /// every layer moves, stays small).
    Upstream(Box<UpstreamBody>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn empty() -> Self {
        Body::Full(None)
    }

    /// Keeps `token` until this body has ended, broken off or been dropped: an upstream body
    /// holds it with what its exchange holds; a body in memory, which hyper sends whole at
    /// once, lets it go now.
    pub(crate) fn hold(&mut self, token: impl Send + Sync + 'static) {
        if let Body::Upstream(upstream) = self {
            upstream.inner.hold(token);
        }
    }

    /// Streams `inner` until `deadline`.
    pub(crate) fn upstream(inner: Held, deadline: Instant) -> Self {
        Body::upstream_after(Bytes::new(), inner, deadline)
    }

    /// Sends `prefix` (already read from `inner`), then streams the rest of `inner`.
    pub(crate) fn upstream_after(prefix: Bytes, inner: Held, deadline: Instant) -> Self {
        Body::Upstream(Box::new(UpstreamBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }))
    }
}

#[derive(Debug)]
pub struct UpstreamBody {
    prefix: Option<Bytes>,
    inner: Held,
    deadline: Pin<Box<Sleep>>,
}

/// An upstream body, and what its exchange holds until the body ends, breaks off or is
/// dropped (the request's place upstream).
pub(crate) struct Held {
    inner: Incoming,
    until_end: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("holding", &self.until_end.is_some())
            .finish()
    }
}

impl Held {
    pub(crate) fn new(inner: Incoming, until_end: impl Send + Sync + 'static) -> Held {
        Held {
            inner,
            until_end: Some(Box::new(until_end)),
        }
    }
}

impl Held {
    /// Holds `token` too, until the body ends (or at once drops it, if it has).
    fn hold(&mut self, token: impl Send + Sync + 'static) {
        if let Some(before) = self.until_end.take() {
            self.until_end = Some(Box::new((before, token)));
        }
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.until_end = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
