//! The fake site's data and its answers to the 21 operations.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::edge::{self, Shape};
use super::points;
use super::{RECORD_LIMIT, Recorded, Shared};
use crate::body::Body;
use crate::error::error_response;
use crate::routes::{self, Operation, RouteError};
use crate::server::{ConnInfo, Handler};

/// A user of the fake site with the credentials that log in as them.
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub account_id: &'static str,
    pub email: &'static str,
    pub display_name: &'static str,
    /// The API token for Basic `email:token`.
    pub api_token: &'static str,
    /// The OAuth access token for `Bearer`.
    pub bearer: &'static str,
    pub admin: bool,
    pub groups: &'static [&'static str],
}

/// The fake site's users. Alice is a Confluence administrator, Bob is not, Carol cannot log in.
pub const DEMO_USERS: [DemoUser; 3] = [
    DemoUser {
        account_id: "712020:a11ce000-0000-4000-8000-000000000001",
        email: "alice@example.com",
        display_name: "Alice Admin",
        api_token: "alice-api-token",
        bearer: "alice-oauth-token",
        admin: true,
        groups: &[
            "confluence-users",
            "confluence-administrators",
            "site-admins",
        ],
    },
    DemoUser {
        account_id: "712020:b0b00000-0000-4000-8000-000000000002",
        email: "bob@example.com",
        display_name: "Bob Builder",
        api_token: "bob-api-token",
        bearer: "bob-oauth-token",
        admin: false,
        groups: &["confluence-users"],
    },
    DemoUser {
        account_id: "712020:ca501000-0000-4000-8000-000000000003",
        email: "carol@example.com",
        display_name: "Carol External",
        api_token: "",
        bearer: "",
        admin: false,
        groups: &[],
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WatchKind {
    Content,
    Label,
    Space,
}

#[derive(Debug, Clone)]
struct Property {
    id: u64,
    value: Value,
    created: String,
    modified: String,
}

#[derive(Default)]
struct Data {
    watches: HashSet<(&'static str, WatchKind, String)>,
    /// By (account id, key); a BTreeMap so listings come in key order.
    properties: BTreeMap<(&'static str, String), Property>,
    next_property_id: u64,
}

pub(super) struct Site {
    base: String,
    /// User objects returned by bulk lookups (the quota-relevant unit).
    pub(super) bulk_objects: std::sync::atomic::AtomicU64,
    /// `parking_lot::Mutex`: every handler takes it briefly and never across an await.
    data: parking_lot::Mutex<Data>,
}

impl Site {
    pub(super) fn new(base: String) -> Site {
        Site {
            base,
            bulk_objects: Default::default(),
            data: parking_lot::Mutex::new(Data {
                next_property_id: 1000,
                ..Data::default()
            }),
        }
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }
}

pub(super) struct FakeHandler(pub(super) Arc<Shared>);

impl Handler for FakeHandler {
    async fn call(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
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
                headers: parts.headers.clone(),
                body: body.clone(),
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

/// The query string as decoded name/value pairs, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let text = |bytes: std::borrow::Cow<'_, [u8]>| String::from_utf8_lossy(&bytes).into_owned();
        let pairs = crate::query::pairs(query.unwrap_or(""))
            .map(|(k, v)| (text(k), text(v)))
            .collect();
        Query(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The accounts a bulk lookup names: first occurrences only, and (as Confluence documents)
    /// only the first 200.
    fn accounts(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        for id in self.list("accountId") {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.truncate(200);
        ids
    }

    /// Every value of a parameter, comma-separated lists flattened.
    fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, Failure> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("{name} must be a non-negative integer"),
                )
            }),
        }
    }
}

type Failure = (StatusCode, String);

fn fail(status: StatusCode, message: &str) -> Failure {
    (status, message.to_owned())
}

/// What an operation answers when it succeeds.
enum Answer {
    Json(StatusCode, Value),
    NoContent,
}

impl Answer {
    fn into_response(self) -> Response<Body> {
        match self {
            Answer::NoContent => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Answer::Json(status, value) => {
                let mut response = Response::new(Body::full(Bytes::from(value.to_string())));
                *response.status_mut() = status;
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json;charset=UTF-8"),
                );
                // As Confluence Cloud does: wikigate caches despite this, deliberately.
                headers.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache, no-store, must-revalidate"),
                );
                response
            }
        }
    }
}

struct Ctx<'a> {
    site: &'a Site,
    /// The site URL the answer is written for: the configured one, or — like proxy-aware
    /// applications do — one built from `X-Forwarded-Host`/`-Proto` when the request has them.
    base: String,
    caller: Option<&'static DemoUser>,
    query: &'a Query,
    resolved: &'a routes::Resolved<'a>,
    path_and_query: &'a str,
    xsrf_ok: bool,
    body: &'a Bytes,
    shape: Shape,
}

impl Ctx<'_> {
    fn links(&self, self_path: &str) -> Value {
        json!({ "base": self.base, "context": "/wiki", "self": format!("{}{}", self.base, self_path) })
    }

    fn answer(&self) -> Result<Answer, Failure> {
        use Operation::*;
        match self.resolved.operation {
            GetAnonymousUser => Ok(self.json(self.anonymous())),
            GetCurrentUser => Ok(self.json(match self.caller {
                Some(user) => self.user_json(user, user),
                None => self.anonymous(),
            })),
            GetUser => {
                let (caller, user) = (self.caller()?, self.required_user("accountId")?);
                Ok(self.json(self.user_json(user, caller)))
            }
            GetGroupMembershipsForUser => self.caller().and_then(|_| self.memberof()),
            GetBulkUserLookup => self.bulk(self.caller()?),
            GetPrivacyUnsafeUserEmail => {
                self.caller()?;
                let user = self.required_user("accountId")?;
                Ok(self.json(json!({ "accountId": user.account_id, "email": user.email })))
            }
            GetPrivacyUnsafeUserEmailBulk => self.caller().and_then(|_| self.emails()),
            GetContentWatchStatus | IsWatchingLabel | IsWatchingSpace => {
                let (who, kind, id) = self.watch_target(self.caller()?)?;
                let watching = self.data().watches.contains(&(who, kind, id));
                Ok(self.json(json!({ "watching": watching })))
            }
            AddContentWatcher | AddLabelWatcher | AddSpaceWatcher => self.watch(true),
            RemoveContentWatcher | RemoveLabelWatcher | RemoveSpaceWatch => self.watch(false),
            GetUserProperties => self.list_properties(self.caller()?),
            GetUserProperty => {
                let (owner, key) = self.property_target(self.caller()?)?;
                let data = self.data();
                let property = data
                    .properties
                    .get(&(owner, key.clone()))
                    .ok_or_else(|| self.no_property(&key))?;
                Ok(self.json(self.property_json(owner, &key, property)))
            }
            CreateUserProperty => self.create_property(),
            UpdateUserProperty => self.update_property(),
            DeleteUserProperty => {
                let (owner, key) = self.property_target(self.caller()?)?;
                self.data()
                    .properties
                    .remove(&(owner, key.clone()))
                    .ok_or_else(|| self.no_property(&key))?;
                Ok(Answer::NoContent)
            }
        }
    }

    /// The authenticated caller, or Confluence's 401 for an operation that needs one.
    fn caller(&self) -> Result<&'static DemoUser, Failure> {
        self.caller.ok_or_else(|| {
            fail(
                StatusCode::UNAUTHORIZED,
                "This request needs authentication",
            )
        })
    }

    fn emails(&self) -> Result<Answer, Failure> {
        let ids = self.query.accounts();
        if ids.is_empty() {
            return Err(fail(StatusCode::BAD_REQUEST, "accountId is required"));
        }
        let records: Vec<Value> = ids
            .iter()
            .filter_map(|id| find_user(id))
            .map(|u| json!({ "accountId": u.account_id, "email": u.email }))
            .collect();
        Ok(self.json(Value::Array(records)))
    }

    /// Starts (`true`) or stops watching.
    fn watch(&self, watching: bool) -> Result<Answer, Failure> {
        let caller = self.caller()?;
        self.require_xsrf()?;
        let target = self.watch_target(caller)?;
        let mut data = self.data();
        match watching {
            true => data.watches.insert(target),
            false => data.watches.remove(&target),
        };
        Ok(Answer::NoContent)
    }

    fn create_property(&self) -> Result<Answer, Failure> {
        let (owner, key) = self.property_target(self.caller()?)?;
        let value = self.property_value()?;
        let mut data = self.data();
        if data.properties.contains_key(&(owner, key.clone())) {
            return Err(fail(
                StatusCode::CONFLICT,
                &format!("A property with key '{key}' already exists"),
            ));
        }
        data.next_property_id += 1;
        let now = now_iso8601();
        let property = Property {
            id: data.next_property_id,
            value,
            created: now.clone(),
            modified: now,
        };
        let body = self.property_json(owner, &key, &property);
        data.properties.insert((owner, key), property);
        Ok(Answer::Json(StatusCode::CREATED, body))
    }

    fn update_property(&self) -> Result<Answer, Failure> {
        let (owner, key) = self.property_target(self.caller()?)?;
        let value = self.property_value()?;
        let mut data = self.data();
        let property = data
            .properties
            .get_mut(&(owner, key.clone()))
            .ok_or_else(|| self.no_property(&key))?;
        property.value = value;
        property.modified = now_iso8601();
        Ok(Answer::NoContent)
    }

    fn data(&self) -> parking_lot::MutexGuard<'_, Data> {
        self.site.data.lock()
    }

    fn json(&self, value: Value) -> Answer {
        Answer::Json(StatusCode::OK, value)
    }

    fn expands(&self, what: &str) -> bool {
        self.query.list("expand").contains(&what)
    }

    fn required_user(&self, param: &str) -> Result<&'static DemoUser, Failure> {
        let id = self
            .query
            .get(param)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| fail(StatusCode::BAD_REQUEST, &format!("{param} is required")))?;
        find_user(id).ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                &format!("No user found with accountId: {id}"),
            )
        })
    }

    fn anonymous(&self) -> Value {
        let mut value = json!({
            "type": "anonymous",
            "profilePicture": { "path": "/wiki/images/icons/profilepics/anonymous.svg", "width": 48, "height": 48, "isDefault": true },
            "displayName": "Anonymous",
            "isExternalCollaborator": false,
            "_expandable": { "operations": "" },
            "_links": self.links(self.path_and_query.trim_start_matches("/wiki")),
        });
        if self.expands("operations") {
            value["operations"] = json!([{ "operation": "read", "targetType": "application" }]);
            value["_expandable"] = json!({});
        }
        value
    }

    /// A user as `viewer` sees them: the email is visible only to the user and to admins.
    fn user_json(&self, user: &DemoUser, viewer: &DemoUser) -> Value {
        let email = if viewer.admin || viewer.account_id == user.account_id {
            user.email
        } else {
            ""
        };
        let mut value = json!({
            "type": "known",
            "accountId": user.account_id,
            "accountType": "atlassian",
            "email": email,
            "publicName": user.display_name.split(' ').next().unwrap_or(user.display_name),
            "profilePicture": { "path": format!("/wiki/aa-avatar/{}", user.account_id), "width": 48, "height": 48, "isDefault": false },
            "displayName": user.display_name,
            "timeZone": "Europe/Berlin",
            "isExternalCollaborator": user.api_token.is_empty(),
            "externalCollaborator": user.api_token.is_empty(),
            "isGuest": false,
            "_expandable": { "operations": "", "personalSpace": "" },
            "_links": self.links(&format!("/rest/api/user?accountId={}", user.account_id)),
        });
        if self.expands("operations") {
            value["operations"] = json!([
                { "operation": "use", "targetType": "application" },
                { "operation": "create", "targetType": "page" },
                { "operation": "create", "targetType": "blogpost" },
                { "operation": "create", "targetType": "comment" },
                { "operation": "create", "targetType": "attachment" },
                { "operation": "update", "targetType": "userstatus" },
            ]);
            value["_expandable"]
                .as_object_mut()
                .expect("object")
                .remove("operations");
        }
        if self.expands("personalSpace") {
            let key = format!("~{}", user.account_id);
            value["personalSpace"] = json!({
                "key": key,
                "name": user.display_name,
                "type": "personal",
                "status": "current",
                "_expandable": {},
                "_links": {
                    "webui": format!("/spaces/{key}"),
                    "self": format!("{}/rest/api/space/{key}", self.base),
                },
            });
            value["_expandable"]
                .as_object_mut()
                .expect("object")
                .remove("personalSpace");
        }
        value
    }

    fn memberof(&self) -> Result<Answer, Failure> {
        let user = self.required_user("accountId")?;
        let start = self.query.number("start", 0)? as usize;
        let limit = self.query.number("limit", 200)?.min(200) as usize;
        let results: Vec<Value> = user
            .groups
            .iter()
            .skip(start)
            .take(limit)
            .map(|name| {
                json!({
                    "type": "group",
                    "name": name,
                    "id": format!("group-{name}"),
                    "_links": { "self": format!("{}/rest/api/group/by-id?id=group-{name}", self.base) },
                })
            })
            .collect();
        let mut links = self.links(self.path_and_query.trim_start_matches("/wiki"));
        if start + results.len() < user.groups.len() {
            links["next"] = json!(format!(
                "/rest/api/user/memberof?accountId={}&start={}&limit={limit}",
                user.account_id,
                start + limit
            ));
        }
        Ok(self.json(json!({
            "results": results, "start": start, "limit": limit, "size": results.len(), "_links": links,
        })))
    }

    fn bulk(&self, caller: &DemoUser) -> Result<Answer, Failure> {
        let ids = self.query.accounts();
        if ids.is_empty() {
            return Err(fail(StatusCode::BAD_REQUEST, "accountId is required"));
        }
        let limit = self.query.number("limit", 200)?;
        if !(1..=200).contains(&limit) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "limit must be between 1 and 200",
            ));
        }
        let results: Vec<Value> = ids
            .iter()
            .filter_map(|id| find_user(id))
            .take(limit as usize)
            .map(|user| {
                let mut value = self.user_json(user, caller);
                let object = value.as_object_mut().expect("object");
                object.remove("externalCollaborator");
                object.remove("isGuest");
                object.insert(
                    "_links".to_owned(),
                    json!({ "self": format!("{}/rest/api/user?accountId={}", self.base, user.account_id) }),
                );
                value
            })
            .collect();
        self.site
            .bulk_objects
            .fetch_add(results.len() as u64, Ordering::SeqCst);
        // Atlassian's bulk answers name no `self`; the plain shape keeps one.
        let mut links = self.links(self.path_and_query.trim_start_matches("/wiki"));
        if self.shape == Shape::Edge {
            links.as_object_mut().expect("object").remove("self");
        }
        Ok(self.json(json!({
            "results": results, "start": 0, "limit": limit, "size": results.len(),
            "_links": links,
        })))
    }

    fn require_xsrf(&self) -> Result<(), Failure> {
        if self.xsrf_ok {
            Ok(())
        } else {
            Err(fail(StatusCode::FORBIDDEN, "XSRF check failed"))
        }
    }

    /// Whose watch, of what: the caller's, or (admins only) the `accountId` given.
    fn watch_target(
        &self,
        caller: &'static DemoUser,
    ) -> Result<(&'static str, WatchKind, String), Failure> {
        let kind = match self.resolved.route() {
            routes::Route::WatchContent => WatchKind::Content,
            routes::Route::WatchLabel => WatchKind::Label,
            _ => WatchKind::Space,
        };
        let id = self
            .resolved
            .params()
            .next()
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        let named = ["accountId", "key", "username"]
            .iter()
            .find_map(|p| self.query.get(p).filter(|v| !v.is_empty()));
        let who = match named {
            None => caller,
            Some(_) if !caller.admin => {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "Only Confluence administrators can specify another user",
                ));
            }
            Some(_) => self.required_user("accountId")?,
        };
        Ok((who.account_id, kind, id))
    }

    /// The user whose properties the path names: the caller's own, or any user's for admins.
    fn property_owner(&self, caller: &'static DemoUser) -> Result<&'static DemoUser, Failure> {
        let user_id = self.resolved.param("userId").unwrap_or_default();
        let owner = find_user(user_id).ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                &format!("No user found with accountId: {user_id}"),
            )
        })?;
        if owner.account_id != caller.account_id && !caller.admin {
            return Err(fail(
                StatusCode::FORBIDDEN,
                "Not permitted to use another user's properties",
            ));
        }
        Ok(owner)
    }

    /// Whose property, under which key.
    fn property_target(
        &self,
        caller: &'static DemoUser,
    ) -> Result<(&'static str, String), Failure> {
        let owner = self.property_owner(caller)?;
        let key = self.resolved.param("key").unwrap_or_default().to_owned();
        Ok((owner.account_id, key))
    }

    fn list_properties(&self, caller: &'static DemoUser) -> Result<Answer, Failure> {
        let owner = self.property_owner(caller)?;
        let start = self.query.number("start", 0)? as usize;
        let limit = self.query.number("limit", 5)?;
        if limit > 25 {
            return Err(fail(StatusCode::BAD_REQUEST, "limit must be at most 25"));
        }
        let limit = limit as usize;
        let data = self.data();
        let keys: Vec<&String> = data
            .properties
            .keys()
            .filter(|(owner_id, _)| *owner_id == owner.account_id)
            .map(|(_, key)| key)
            .collect();
        let results: Vec<Value> = keys
            .iter()
            .skip(start)
            .take(limit)
            .map(|key| json!({ "key": key }))
            .collect();
        let mut links = self.links(self.path_and_query.trim_start_matches("/wiki"));
        if start + results.len() < keys.len() {
            links["next"] = json!(format!(
                "/rest/api/user/{}/property?start={}&limit={limit}",
                owner.account_id,
                start + limit
            ));
        }
        Ok(self.json(json!({
            "results": results, "start": start, "limit": limit, "size": results.len(), "_links": links,
        })))
    }

    /// The `value` of a create or update body (`UserPropertyCreate` / `UserPropertyUpdate`).
    fn property_value(&self) -> Result<Value, Failure> {
        let invalid = || {
            fail(
                StatusCode::BAD_REQUEST,
                "The body must be a JSON object {\"value\": {…}} and nothing else",
            )
        };
        let body: Value = serde_json::from_slice(self.body).map_err(|_| invalid())?;
        let object = body.as_object().ok_or_else(invalid)?;
        match object.get("value") {
            Some(value @ Value::Object(_)) if object.len() == 1 => Ok(value.clone()),
            _ => Err(invalid()),
        }
    }

    fn no_property(&self, key: &str) -> Failure {
        fail(
            StatusCode::NOT_FOUND,
            &format!("No property found with key: {key}"),
        )
    }

    fn property_json(&self, owner: &str, key: &str, property: &Property) -> Value {
        json!({
            "key": key,
            "value": property.value,
            "id": property.id.to_string(),
            "lastModifiedDate": property.modified,
            "createdDate": property.created,
            "_links": self.links(&format!("/rest/api/user/{owner}/property/{key}")),
        })
    }
}

fn find_user(account_id: &str) -> Option<&'static DemoUser> {
    DEMO_USERS
        .iter()
        .find(|u| u.account_id == account_id)
        .or_else(|| DIRECTORY.get(account_id))
}

/// How many directory accounts the site has besides the demo users (for bulk workloads).
pub const DIRECTORY_SIZE: usize = 5000;

/// The account id of directory account `n` (`n < DIRECTORY_SIZE`); they cannot log in.
pub fn directory_account(n: usize) -> String {
    format!("712020:d1000000-0000-4000-8000-{n:012}")
}

/// The directory, built once per process (its strings live as long as the process).
static DIRECTORY: std::sync::LazyLock<std::collections::HashMap<&'static str, DemoUser>> =
    std::sync::LazyLock::new(|| {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        (0..DIRECTORY_SIZE)
            .map(|n| {
                let user = DemoUser {
                    account_id: leak(directory_account(n)),
                    email: leak(format!("user{n}@example.com")),
                    display_name: leak(format!("Directory User{n}")),
                    api_token: "",
                    bearer: "",
                    admin: false,
                    groups: &["confluence-users"],
                };
                (user.account_id, user)
            })
            .collect()
    });

/// The current UTC time as `2022-02-01T12:00:00.111Z`.
fn now_iso8601() -> String {
    crate::rfc3339::millis(std::time::SystemTime::now())
}
