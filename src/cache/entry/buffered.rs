//! An answer read whole from upstream (decoded, at most `cache.max_entry_bytes`), before the
//! cache decides whether to store it: in the codings it arrived in, with the points it cost.

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Response, StatusCode};

use super::set_representation;
use super::vary::add_vary_accept_encoding;
use crate::body::Body;
use crate::coding::{self, Accepts, Coding};

/// An upstream answer held in memory, decoded: what wikigate reads, rewrites and stores.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub status: StatusCode,
    /// Upstream's end-to-end headers, without `Content-Encoding` and `Content-Length`: those
    /// describe one representation, and are set for the one each client gets.
    pub headers: HeaderMap,
    /// The body, decoded.
    pub(super) body: Bytes,
    /// Upstream's own gzip of `body`, as long as `body` is what upstream sent.
    pub(super) gzip: Option<Bytes>,
    /// What the call cost by Atlassian's table, priced once when it was read
    /// ([`Buffered::priced`]): the points an answer made from it saves.
    pub(super) points: u32,
}

impl Buffered {
    /// An answer whose body arrived without a content coding.
    pub fn plain(status: StatusCode, headers: HeaderMap, body: Bytes) -> Buffered {
        Buffered {
            status,
            headers,
            body,
            gzip: None,
            points: 0,
        }
    }

    /// An answer that arrived gzip-encoded, with its body decoded already.
    pub fn gzipped(status: StatusCode, headers: HeaderMap, body: Bytes, gzip: Bytes) -> Buffered {
        Buffered {
            status,
            headers,
            body,
            gzip: Some(gzip),
            points: 0,
        }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The answer with what its call cost (priced once, where it was read).
    pub fn priced(mut self, points: u32) -> Buffered {
        self.points = points;
        self
    }

    /// What the call cost by Atlassian's table (0 until priced).
    pub fn points(&self) -> u32 {
        self.points
    }

    /// Replaces the body (a rewrite); upstream's gzip of the old one goes with it.
    pub fn set_body(&mut self, body: Bytes) {
        self.body = body;
        self.gzip = None;
    }

    /// The answer as a response to a client with these `Accept-Encoding` preferences (for
    /// answers shared but not stored: 4xx/5xx to followers).
    pub fn to_response(&self, head: bool, accepts: Accepts) -> Response<Body> {
        let (coding, body) = match (&self.gzip, accepts.preferred()) {
            (Some(gzip), Coding::Gzip) => (Coding::Gzip, gzip.clone()),
            // A client that refuses identity gets gzip even when upstream sent none.
            (None, Coding::Gzip) if !accepts.identity() => (Coding::Gzip, coding::gzip(&self.body)),
            _ => (Coding::Identity, self.body.clone()),
        };
        let mut headers = self.headers.clone();
        set_representation(&mut headers, coding, head.then_some(body.len()));
        add_vary_accept_encoding(&mut headers);
        let mut response = Response::new(if head {
            Body::empty()
        } else {
            Body::full(body)
        });
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}
