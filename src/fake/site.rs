//! The fake site's handler: who is calling (Basic, Bearer, the session cookie), the edge's
//! checks, then the answer (`answers`) in the edge's shape (`edge`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::answers::{Ctx, Query};
use super::data::{DEMO_USERS, DemoUser};
use super::edge::{self, Shape};
use super::points;
use super::{RECORD_LIMIT, Recorded, Shared};
use crate::body::Body;
use crate::error::error_response;
use crate::routes::{self, RouteError};
use crate::server::{ConnInfo, Handler};

pub(super) struct FakeHandler(pub(super) Arc<Shared>);

impl Handler for FakeHandler {
    fn call(
        handler: &Arc<FakeHandler>,
        request: Request<Incoming>,
        _conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        let handler = handler.clone();
        async move { handler.reply(request).await }
    }
}

impl FakeHandler {
    async fn reply(&self, request: Request<Incoming>) -> Response<Body> {
        let head = request.method() == http::Method::HEAD;
        let request_headers = request.headers().clone();
        let mut response = self.respond(request).await;
        if self.0.options.shape == Shape::Edge {
            response = edge::dress(response, &request_headers).await;
        }
        // Injected headers go last: they may replace what the edge set.
        let injected = self.0.faults.lock().response_headers.clone();
        response.headers_mut().extend(injected);
        if head {
            // The body's length stands in for it (of the representation it would have been).
            let (mut parts, body) = response.into_parts();
            let length = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            response = Response::from_parts(parts, Body::empty());
        }
        response
    }
}

impl FakeHandler {
    /// The answer before the edge dresses it (and with its body, also for HEAD).
    async fn respond(&self, request: Request<Incoming>) -> Response<Body> {
        let shared = &self.0;
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 1 << 20).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error_response(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        };
        {
            let mut recorded = shared.recorded.lock();
            if recorded.len() == RECORD_LIMIT {
                recorded.remove(0);
            }
            recorded.push(Recorded {
                method: parts.method.clone(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |p| p.as_str().to_owned()),
                // Copies: the values as parsed are slices of the connection's read buffer,
                // and would keep a buffer (8 KB or more) alive per recorded request.
                headers: parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.clone(), detached(value)))
                    .collect(),
                body: Bytes::copy_from_slice(&body),
            });
        }
        let resolved = match routes::resolve(&parts.method, parts.uri.path()) {
            Ok(resolved) => resolved,
            Err(RouteError::NotFound) => {
                return error_response(StatusCode::NOT_FOUND, "No resource at this path");
            }
            Err(RouteError::MethodNotAllowed { .. }) => {
                return error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
            }
            Err(e) => return error_response(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        shared.hits[resolved.operation.index()].fetch_add(1, Ordering::SeqCst);

        let faults = shared.faults.lock().clone();
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        if let Some(status) = faults.fail_with {
            return error_response(status, "injected failure");
        }
        let operation = resolved.operation;
        let write = operation.verb().is_write();
        let stated =
            match shared
                .limits
                .take(operation.route(), &parts.method, parts.uri.path(), write)
            {
                Ok(stated) => stated,
                Err(refused) => {
                    let mut answer = error_response(StatusCode::TOO_MANY_REQUESTS, refused.message);
                    answer.headers_mut().extend(refused.headers);
                    return answer;
                }
            };
        if let Some(headers) = shared.points.as_ref().and_then(points::Points::refuse) {
            let mut refused = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit exceeded: the app's points quota for this site is spent",
            );
            refused.headers_mut().extend(headers);
            return refused;
        }

        let mut response = self.answer(&parts, &body, &resolved);
        response.headers_mut().extend(stated);
        if let Some(points) = &shared.points {
            let answered = match response.body() {
                Body::Full(bytes) => bytes.clone().unwrap_or_default(),
                _ => Bytes::new(),
            };
            let status = response.status();
            points.charge(
                operation.route(),
                write,
                status,
                &answered,
                response.headers_mut(),
            );
        }
        let armed = {
            let mut holds = shared.holds.lock();
            let position = holds.iter().position(|(op, _)| *op == resolved.operation);
            position.map(|i| holds.remove(i).1)
        };
        if let Some(mut armed) = armed {
            armed.reached.send_replace(true);
            let _ = armed.release.wait_for(|r| *r).await;
        }
        response
    }

    fn answer(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        resolved: &routes::Resolved<'_>,
    ) -> Response<Body> {
        let query = Query::parse(parts.uri.query());
        let caller = match authenticate(&parts.headers) {
            Ok(caller) => caller,
            Err(()) => {
                return error_response(StatusCode::UNAUTHORIZED, "Invalid credentials");
            }
        };
        let forwarded = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let forwarded_host =
            forwarded("x-forwarded-host").filter(|_| self.0.options.honour_forwarded_host);
        let base = match forwarded_host {
            Some(host) => format!(
                "{}://{host}/wiki",
                forwarded("x-forwarded-proto").unwrap_or("http")
            ),
            None => self.0.site.base().to_owned(),
        };
        let ctx = Ctx {
            site: &self.0.site,
            base,
            caller,
            query: &query,
            resolved,
            path_and_query: parts.uri.path_and_query().map_or("", |p| p.as_str()),
            xsrf_ok: parts
                .headers
                .get("x-atlassian-token")
                .is_some_and(|v| v == "no-check"),
            body,
            shape: self.0.options.shape,
            bulk_objects: self.0.options.bulk_objects,
        };
        let mut response = match ctx.answer() {
            Ok(answer) => answer.into_response(),
            Err((status, message)) => error_response(status, &message),
        };
        // As Atlassian does: the account the request was answered for.
        let viewer = caller.map_or("anonymous", |u| u.account_id);
        response
            .headers_mut()
            .insert("x-aaccountid", HeaderValue::from_static(viewer));
        response
    }
}

/// Who is calling: a user, or nobody (anonymous access).
fn authenticate(headers: &http::HeaderMap) -> Result<Option<&'static DemoUser>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?;
    let (scheme, credential) = value.split_once(' ').ok_or(())?;
    let user = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential.trim())
            .map_err(|_| ())?;
        let decoded = String::from_utf8(decoded).map_err(|_| ())?;
        let (email, token) = decoded.split_once(':').ok_or(())?;
        DEMO_USERS
            .iter()
            .find(|u| !u.api_token.is_empty() && u.email == email && u.api_token == token)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        DEMO_USERS
            .iter()
            .find(|u| !u.bearer.is_empty() && u.bearer == credential.trim())
    } else {
        None
    };
    user.map(Some).ok_or(())
}

/// A header value in an allocation of its own.
fn detached(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}
