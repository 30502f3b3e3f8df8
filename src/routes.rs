//! The route table: every operation of the Confluence user API that wikigate serves.
//!
//! The table is derived from `shared/confluence-user-api.json` (12 path templates, 21
//! operations). It is the only place that knows the API's shape; the gateway, the cache and
//! the fake Confluence site all resolve requests through [`resolve`].
//!
//! Invariants:
//! - A path outside `/wiki/rest/api/user` never resolves: wikigate is not an open proxy.
//! - Fixed segments win over parameters: `/user/current` is [`Route::Current`], never a `{userId}`.
//! - A resolved request always names one of the 21 operations; a method the spec does not define
//!   for a path is [`RouteError::MethodNotAllowed`] (HEAD is allowed wherever GET is).
//! - Path parameters are percent-decoded and validated here, so nothing downstream sees a
//!   parameter that contains `/`, control bytes, invalid UTF-8 or a dot-segment.

use std::borrow::Cow;

use http::Method;

/// The prefix every served path starts with.
pub const API_PREFIX: &str = "/wiki/rest/api/user";

/// One of the 12 path templates of the user API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    User,
    Anonymous,
    Current,
    MemberOf,
    Bulk,
    Email,
    EmailBulk,
    WatchContent,
    WatchLabel,
    WatchSpace,
    Properties,
    Property,
}

/// A segment of a path template after [`API_PREFIX`].
#[derive(Debug, Clone, Copy)]
enum Segment {
    Fixed(&'static str),
    Param(&'static str),
}

use Segment::{Fixed, Param};

impl Route {
    /// All routes, fixed templates before parameterised ones so that fixed segments win.
    pub const ALL: [Route; 12] = [
        Route::User,
        Route::Anonymous,
        Route::Current,
        Route::MemberOf,
        Route::Bulk,
        Route::Email,
        Route::EmailBulk,
        Route::WatchContent,
        Route::WatchLabel,
        Route::WatchSpace,
        Route::Properties,
        Route::Property,
    ];

    /// The route's position in [`Route::ALL`], for per-route arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The spec's path template, e.g. `/wiki/rest/api/user/{userId}/property/{key}`.
    /// Used as the bounded `route` label in logs and metrics.
    pub fn template(self) -> &'static str {
        match self {
            Route::User => "/wiki/rest/api/user",
            Route::Anonymous => "/wiki/rest/api/user/anonymous",
            Route::Current => "/wiki/rest/api/user/current",
            Route::MemberOf => "/wiki/rest/api/user/memberof",
            Route::Bulk => "/wiki/rest/api/user/bulk",
            Route::Email => "/wiki/rest/api/user/email",
            Route::EmailBulk => "/wiki/rest/api/user/email/bulk",
            Route::WatchContent => "/wiki/rest/api/user/watch/content/{contentId}",
            Route::WatchLabel => "/wiki/rest/api/user/watch/label/{labelName}",
            Route::WatchSpace => "/wiki/rest/api/user/watch/space/{spaceKey}",
            Route::Properties => "/wiki/rest/api/user/{userId}/property",
            Route::Property => "/wiki/rest/api/user/{userId}/property/{key}",
        }
    }

    fn segments(self) -> &'static [Segment] {
        match self {
            Route::User => &[],
            Route::Anonymous => &[Fixed("anonymous")],
            Route::Current => &[Fixed("current")],
            Route::MemberOf => &[Fixed("memberof")],
            Route::Bulk => &[Fixed("bulk")],
            Route::Email => &[Fixed("email")],
            Route::EmailBulk => &[Fixed("email"), Fixed("bulk")],
            Route::WatchContent => &[Fixed("watch"), Fixed("content"), Param("contentId")],
            Route::WatchLabel => &[Fixed("watch"), Fixed("label"), Param("labelName")],
            Route::WatchSpace => &[Fixed("watch"), Fixed("space"), Param("spaceKey")],
            Route::Properties => &[Param("userId"), Fixed("property")],
            Route::Property => &[Param("userId"), Fixed("property"), Param("key")],
        }
    }

    /// The operations defined on this path, one per method.
    pub fn operations(self) -> &'static [Operation] {
        use Operation::*;
        match self {
            Route::User => &[GetUser],
            Route::Anonymous => &[GetAnonymousUser],
            Route::Current => &[GetCurrentUser],
            Route::MemberOf => &[GetGroupMembershipsForUser],
            Route::Bulk => &[GetBulkUserLookup],
            Route::Email => &[GetPrivacyUnsafeUserEmail],
            Route::EmailBulk => &[GetPrivacyUnsafeUserEmailBulk],
            Route::WatchContent => &[
                GetContentWatchStatus,
                AddContentWatcher,
                RemoveContentWatcher,
            ],
            Route::WatchLabel => &[IsWatchingLabel, AddLabelWatcher, RemoveLabelWatcher],
            Route::WatchSpace => &[IsWatchingSpace, AddSpaceWatcher, RemoveSpaceWatch],
            Route::Properties => &[GetUserProperties],
            Route::Property => &[
                GetUserProperty,
                UpdateUserProperty,
                CreateUserProperty,
                DeleteUserProperty,
            ],
        }
    }

    /// The route's name in config (`[cache.routes.NAME]`), tags (`route:NAME`) and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::User => "user",
            Route::Anonymous => "anonymous",
            Route::Current => "current",
            Route::MemberOf => "memberof",
            Route::Bulk => "bulk",
            Route::Email => "email",
            Route::EmailBulk => "email_bulk",
            Route::WatchContent => "watch_content",
            Route::WatchLabel => "watch_label",
            Route::WatchSpace => "watch_space",
            Route::Properties => "properties",
            Route::Property => "property",
        }
    }

    /// Whether the answer cannot depend on the caller, so that one cached copy may serve every
    /// caller. Only `/user/anonymous` describes nobody in particular.
    pub fn is_shared(self) -> bool {
        matches!(self, Route::Anonymous)
    }

    /// The value of the `Allow` header for this path.
    pub fn allow_header(self) -> &'static str {
        match self {
            Route::WatchContent | Route::WatchLabel | Route::WatchSpace => {
                "GET, HEAD, POST, DELETE"
            }
            Route::Property => "GET, HEAD, PUT, POST, DELETE",
            _ => "GET, HEAD",
        }
    }
}

/// The HTTP methods the spec uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    /// Whether the method changes state upstream (and so gets the XSRF header and the CSRF guard).
    pub fn is_write(self) -> bool {
        !matches!(self, Verb::Get)
    }
}

/// The 21 operations of the spec, named by their `operationId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetUser,
    GetAnonymousUser,
    GetCurrentUser,
    GetGroupMembershipsForUser,
    GetBulkUserLookup,
    GetPrivacyUnsafeUserEmail,
    GetPrivacyUnsafeUserEmailBulk,
    GetContentWatchStatus,
    AddContentWatcher,
    RemoveContentWatcher,
    IsWatchingLabel,
    AddLabelWatcher,
    RemoveLabelWatcher,
    IsWatchingSpace,
    AddSpaceWatcher,
    RemoveSpaceWatch,
    GetUserProperties,
    GetUserProperty,
    UpdateUserProperty,
    CreateUserProperty,
    DeleteUserProperty,
}

impl Operation {
    /// Every operation, in the spec's order.
    pub const ALL: [Operation; 21] = {
        use Operation::*;
        [
            GetUser,
            GetAnonymousUser,
            GetCurrentUser,
            GetGroupMembershipsForUser,
            GetBulkUserLookup,
            GetPrivacyUnsafeUserEmail,
            GetPrivacyUnsafeUserEmailBulk,
            GetContentWatchStatus,
            AddContentWatcher,
            RemoveContentWatcher,
            IsWatchingLabel,
            AddLabelWatcher,
            RemoveLabelWatcher,
            IsWatchingSpace,
            AddSpaceWatcher,
            RemoveSpaceWatch,
            GetUserProperties,
            GetUserProperty,
            UpdateUserProperty,
            CreateUserProperty,
            DeleteUserProperty,
        ]
    };

    /// The spec's `operationId`.
    pub fn id(self) -> &'static str {
        use Operation::*;
        match self {
            GetUser => "getUser",
            GetAnonymousUser => "getAnonymousUser",
            GetCurrentUser => "getCurrentUser",
            GetGroupMembershipsForUser => "getGroupMembershipsForUser",
            GetBulkUserLookup => "getBulkUserLookup",
            GetPrivacyUnsafeUserEmail => "getPrivacyUnsafeUserEmail",
            GetPrivacyUnsafeUserEmailBulk => "getPrivacyUnsafeUserEmailBulk",
            GetContentWatchStatus => "getContentWatchStatus",
            AddContentWatcher => "addContentWatcher",
            RemoveContentWatcher => "removeContentWatcher",
            IsWatchingLabel => "isWatchingLabel",
            AddLabelWatcher => "addLabelWatcher",
            RemoveLabelWatcher => "removeLabelWatcher",
            IsWatchingSpace => "isWatchingSpace",
            AddSpaceWatcher => "addSpaceWatcher",
            RemoveSpaceWatch => "removeSpaceWatch",
            GetUserProperties => "getUserProperties",
            GetUserProperty => "getUserProperty",
            UpdateUserProperty => "updateUserProperty",
            CreateUserProperty => "createUserProperty",
            DeleteUserProperty => "deleteUserProperty",
        }
    }

    /// The method the spec defines this operation for.
    pub fn verb(self) -> Verb {
        use Operation::*;
        match self {
            AddContentWatcher | AddLabelWatcher | AddSpaceWatcher | CreateUserProperty => {
                Verb::Post
            }
            UpdateUserProperty => Verb::Put,
            RemoveContentWatcher | RemoveLabelWatcher | RemoveSpaceWatch | DeleteUserProperty => {
                Verb::Delete
            }
            _ => Verb::Get,
        }
    }

    /// The path template this operation lives on.
    pub fn route(self) -> Route {
        Route::ALL
            .into_iter()
            .find(|route| route.operations().contains(&self))
            .expect("every operation belongs to a route")
    }

    /// A dense index in `0..21`, for per-operation counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request did not resolve to an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no route matches this path")]
    NotFound,
    #[error("method not allowed on this path")]
    MethodNotAllowed { allow: &'static str },
    #[error("invalid path parameter {name}: {reason}")]
    InvalidParam {
        name: &'static str,
        reason: &'static str,
    },
}

/// A request resolved to an operation, with its decoded path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub operation: Operation,
    /// Whether the request was HEAD (resolved to the GET operation of the path).
    pub head: bool,
    params: Params<'a>,
}

impl Resolved<'_> {
    pub fn route(&self) -> Route {
        self.operation.route()
    }

    /// A decoded path parameter by its spec name (`userId`, `key`, `contentId`, …).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The decoded path parameters in template order.
    pub fn params(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.params.iter().map(|(n, v)| (*n, v.as_ref()))
    }
}

impl Resolved<'_> {
    /// The tag of the resource a read of this route observes, which writes invalidate:
    /// `watch:content:{id}`, `property:{userId}:{key}`, `properties:{userId}`. Reads of routes
    /// no write in the API can change have none.
    pub fn resource_tag(&self) -> Option<Tag> {
        let param = |name| self.param(name).unwrap_or_default();
        match self.route() {
            Route::WatchContent => Some(Tag(format!("watch:content:{}", param("contentId")))),
            Route::WatchLabel => Some(Tag(format!("watch:label:{}", param("labelName")))),
            Route::WatchSpace => Some(Tag(format!("watch:space:{}", param("spaceKey")))),
            Route::Properties => Some(Tag(format!("properties:{}", param("userId")))),
            Route::Property => Some(Tag(format!(
                "property:{}:{}",
                param("userId"),
                param("key")
            ))),
            _ => None,
        }
    }

    /// The tags a successful write changes: every cached read of the same watch resource, for
    /// every caller and query; or the property itself and every page of its user's listing.
    pub fn invalidates(&self) -> Vec<Tag> {
        if !self.operation.verb().is_write() {
            return Vec::new();
        }
        let mut tags: Vec<Tag> = self.resource_tag().into_iter().collect();
        if self.route() == Route::Property {
            tags.push(Tag(format!(
                "properties:{}",
                self.param("userId").unwrap_or_default()
            )));
        }
        tags
    }
}

/// A name for a set of cached reads that one write (or an operator) invalidates together.
/// `route:{name}` covers every cached read of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// The tag covering every cached read of `route`.
    pub fn route(route: Route) -> Tag {
        Tag(format!("route:{}", route.name()))
    }

    /// A tag named by an operator (`DELETE /admin/cache?tag=…`).
    pub fn named(name: &str) -> Tag {
        Tag(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most two parameters per template (`{userId}` and `{key}`), decoded without allocating
/// when they carry no percent-escapes.
type Params<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// Resolves a method and a request path (without the query) to an operation.
pub fn resolve<'a>(method: &Method, path: &'a str) -> Result<Resolved<'a>, RouteError> {
    let rest = path.strip_prefix(API_PREFIX).ok_or(RouteError::NotFound)?;
    let rest = match rest {
        "" => "",
        "/" => return Err(RouteError::NotFound),
        _ => rest.strip_prefix('/').ok_or(RouteError::NotFound)?,
    };
    let segments: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };

    let route = Route::ALL
        .into_iter()
        .find(|route| template_matches(route.segments(), &segments))
        .ok_or(RouteError::NotFound)?;

    let (verb, head) = match *method {
        Method::GET => (Verb::Get, false),
        Method::HEAD => (Verb::Get, true),
        Method::POST => (Verb::Post, false),
        Method::PUT => (Verb::Put, false),
        Method::DELETE => (Verb::Delete, false),
        _ => return Err(not_allowed(route)),
    };
    let operation = route
        .operations()
        .iter()
        .copied()
        .find(|op| op.verb() == verb)
        .ok_or_else(|| not_allowed(route))?;

    let mut params = Params::new();
    for (segment, raw) in route.segments().iter().zip(&segments) {
        if let Param(name) = *segment {
            params.push((name, decode_param(name, raw)?));
        }
    }
    if let Some(key) = params.iter().find(|(n, _)| *n == "key") {
        validate_property_key(&key.1)?;
    }
    Ok(Resolved {
        operation,
        head,
        params,
    })
}

fn not_allowed(route: Route) -> RouteError {
    RouteError::MethodNotAllowed {
        allow: route.allow_header(),
    }
}

fn template_matches(template: &[Segment], segments: &[&str]) -> bool {
    template.len() == segments.len()
        && template.iter().zip(segments).all(|(t, s)| match t {
            Fixed(fixed) => fixed == s,
            Param(_) => !s.is_empty() && !is_fixed_word(s),
        })
}

/// A segment that names a fixed template at the first position never matches a parameter
/// there, so `/user/bulk/property` is not `{userId}=bulk` but a 404. (Confluence account ids
/// never take these values.)
fn is_fixed_word(segment: &str) -> bool {
    matches!(
        segment,
        "anonymous" | "current" | "memberof" | "bulk" | "email" | "watch"
    )
}

fn decode_param<'a>(name: &'static str, raw: &'a str) -> Result<Cow<'a, str>, RouteError> {
    let invalid = |reason| RouteError::InvalidParam { name, reason };
    let bytes = raw.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(invalid("invalid percent-encoding"));
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| invalid("not valid UTF-8 once percent-decoded"))?;
    if decoded.is_empty() {
        return Err(invalid("empty"));
    }
    if decoded == "." || decoded == ".." {
        return Err(invalid("dot-segments are not allowed"));
    }
    if decoded.contains('/') || decoded.contains('\\') {
        return Err(invalid("must not contain a slash"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(decoded)
}

/// The spec's pattern for property keys: `^[-_a-zA-Z0-9]+$`.
fn validate_property_key(key: &str) -> Result<(), RouteError> {
    let valid = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(RouteError::InvalidParam {
            name: "key",
            reason: "must match ^[-_a-zA-Z0-9]+$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Result<Operation, RouteError> {
        resolve(&method, path).map(|r| r.operation)
    }

    #[test]
    fn route_index_is_the_position_in_all() {
        for (i, route) in Route::ALL.into_iter().enumerate() {
            assert_eq!(route.index(), i);
        }
    }

    #[test]
    fn every_operation_resolves_from_its_template() {
        for operation in Operation::ALL {
            let path = operation
                .route()
                .template()
                .replace("{userId}", "acc-1")
                .replace("{key}", "k1")
                .replace("{contentId}", "123")
                .replace("{labelName}", "lbl")
                .replace("{spaceKey}", "SPC");
            let method = match operation.verb() {
                Verb::Get => Method::GET,
                Verb::Post => Method::POST,
                Verb::Put => Method::PUT,
                Verb::Delete => Method::DELETE,
            };
            assert_eq!(op(method, &path), Ok(operation), "{path}");
        }
    }

    #[test]
    fn table_has_twelve_templates_and_twenty_one_operations() {
        let ops: usize = Route::ALL.iter().map(|r| r.operations().len()).sum();
        assert_eq!((Route::ALL.len(), ops), (12, 21));
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }

    #[test]
    fn fixed_segments_win_over_parameters() {
        assert_eq!(
            op(Method::GET, "/wiki/rest/api/user/current"),
            Ok(Operation::GetCurrentUser)
        );
        assert_eq!(
            op(Method::GET, "/wiki/rest/api/user/bulk/property"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            op(Method::GET, "/wiki/rest/api/user/abc/property"),
            Ok(Operation::GetUserProperties)
        );
    }

    #[test]
    fn outside_the_prefix_is_not_found() {
        for path in [
            "/",
            "/wiki/rest/api/content",
            "/wiki/rest/api/users",
            "/wiki/rest/api/user/",
            "/wiki/rest/api/user/current/",
            "/wiki/rest/api/user/x/y",
        ] {
            assert_eq!(op(Method::GET, path), Err(RouteError::NotFound), "{path}");
        }
    }

    #[test]
    fn undefined_methods_are_not_allowed_with_allow_header() {
        assert_eq!(
            op(Method::POST, "/wiki/rest/api/user/current"),
            Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(
            op(Method::PATCH, "/wiki/rest/api/user/u/property/k"),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, HEAD, PUT, POST, DELETE"
            })
        );
        for m in [Method::TRACE, Method::OPTIONS, Method::PUT] {
            assert!(matches!(
                op(m, "/wiki/rest/api/user/watch/space/S"),
                Err(RouteError::MethodNotAllowed { .. })
            ));
        }
    }

    #[test]
    fn head_resolves_to_the_get_operation() {
        let r = resolve(&Method::HEAD, "/wiki/rest/api/user/anonymous").unwrap();
        assert_eq!((r.operation, r.head), (Operation::GetAnonymousUser, true));
    }

    #[test]
    fn writes_invalidate_what_the_api_says_they_change() {
        let tags = |method, path| {
            resolve(&method, path)
                .unwrap()
                .invalidates()
                .into_iter()
                .map(|t| t.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            tags(Method::POST, "/wiki/rest/api/user/watch/content/42"),
            ["watch:content:42"]
        );
        assert_eq!(
            tags(Method::DELETE, "/wiki/rest/api/user/a%3Ab/property/k"),
            ["property:a:b:k", "properties:a:b"]
        );
        assert!(tags(Method::GET, "/wiki/rest/api/user/watch/content/42").is_empty());
        // A read observes exactly the tag its writes invalidate.
        let read = resolve(&Method::GET, "/wiki/rest/api/user/a:b/property").unwrap();
        assert_eq!(read.resource_tag().unwrap().as_str(), "properties:a:b");
        let read = resolve(&Method::GET, "/wiki/rest/api/user/watch/space/ENG").unwrap();
        assert_eq!(read.resource_tag().unwrap().as_str(), "watch:space:ENG");
        assert!(
            resolve(&Method::GET, "/wiki/rest/api/user/current")
                .unwrap()
                .resource_tag()
                .is_none()
        );
    }

    #[test]
    fn params_are_decoded_and_validated() {
        let r = resolve(&Method::GET, "/wiki/rest/api/user/a%3Ab/property/my-key_1").unwrap();
        assert_eq!(r.param("userId"), Some("a:b"));
        assert_eq!(r.param("key"), Some("my-key_1"));
        for bad in [
            "/wiki/rest/api/user/u/property/bad.key",
            "/wiki/rest/api/user/u/property/bad%20key",
            "/wiki/rest/api/user/a%2Fb/property",
            "/wiki/rest/api/user/%2e%2e/property",
            "/wiki/rest/api/user/..%2f/property",
            "/wiki/rest/api/user/a%00b/property",
            "/wiki/rest/api/user/%ff/property",
            "/wiki/rest/api/user/watch/label/%0a",
            "/wiki/rest/api/user/%zz/property",
            "/wiki/rest/api/user/watch/space/ab%4",
        ] {
            assert!(
                matches!(
                    resolve(&Method::GET, bad),
                    Err(RouteError::InvalidParam { .. })
                ),
                "{bad}"
            );
        }
    }
}
