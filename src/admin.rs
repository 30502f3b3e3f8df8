//! The admin listener: operator endpoints, on an address of their own.
//!
//! Endpoints:
//! - `GET /healthz` — 200 while the process serves at all (liveness).
//! - `GET /readyz` — 200 while accepting traffic, 503 once draining has begun (readiness), so a
//!   load balancer stops sending new requests before the gateway stops accepting them.
//!
//! Everything else is 404 in Confluence's error shape.

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::body::Body;
use crate::error::error_response;
use crate::server::{ConnInfo, Handler};

pub struct Admin {
    draining: watch::Receiver<bool>,
}

impl Admin {
    /// `draining` turns true when shutdown begins.
    pub fn new(draining: watch::Receiver<bool>) -> Admin {
        Admin { draining }
    }
}

impl Handler for Admin {
    async fn call(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin endpoints are read-only",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if *self.draining.borrow() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            _ => error_response(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
