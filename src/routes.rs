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
use std::sync::LazyLock;

use http::Method;

/// The prefix every served path starts with.
pub const API_PREFIX: &str = "/wiki/rest/api/user";

/// An enum and its `ALL` array, the variants in declaration order: one list, so the two
/// cannot disagree (and per-variant tables indexed by `variant as usize` line up with both).
macro_rules! listed_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($variant:ident),* $(,)? } $all_doc:literal) => {
        $(#[$meta])*
        pub enum $name {
            $($variant),*
        }

        impl $name {
            #[doc = $all_doc]
            pub const ALL: [$name; [$(stringify!($variant)),*].len()] = [$($name::$variant),*];
        }
    };
}

listed_enum! {
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
    "All routes, fixed templates before parameterised ones so that fixed segments win."
}

/// A segment of a path template after [`API_PREFIX`].
#[derive(Debug, Clone, Copy)]
enum Segment {
    Fixed(&'static str),
    Param(&'static str),
}

use Segment::{Fixed, Param};

/// The resource a read of a route observes, which writes change (see [`Tag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Watch(WatchKind),
    Properties,
    Property,
}

/// What an answer of a route holds, as Atlassian's points quota counts objects: users and
/// groups cost 2 points each, objects its table does not name 1 each (`quota::cost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    /// One user.
    User,
    /// Users or groups, listed under `results`.
    UsersOrGroups,
    /// One other object: an email record, a property.
    Record,
    /// Other objects, listed under `results` or as a bare array.
    Records,
    /// Nothing the quota counts (a watch status).
    Nothing,
}

/// Everything the route table says about one template. One row per route, in [`Route::ALL`]
/// order: the one place that knows the API's shape.
#[derive(Debug)]
pub struct Spec {
    /// In config (`[cache.routes.NAME]`), tags (`route:NAME`) and metrics.
    pub name: &'static str,
    /// The spec's path template; the bounded `route` label of logs and spans.
    pub template: &'static str,
    segments: &'static [Segment],
    /// The operations defined on the path, one per method.
    pub operations: &'static [Operation],
    /// Whether one cached answer may serve every caller (the answer describes nobody).
    pub shared: bool,
    resource: Option<Resource>,
    /// What an answer holds, for quota points.
    pub objects: Objects,
    /// How long wikigate keeps an answer fresh unless configured otherwise, in seconds.
    pub default_ttl: u64,
}

static TABLE: [Spec; 12] = {
    use Operation::*;
    [
        Spec {
            name: "user",
            template: "/wiki/rest/api/user",
            segments: &[],
            operations: &[GetUser],
            shared: false,
            resource: None,
            objects: Objects::User,
            default_ttl: 300,
        },
        Spec {
            name: "anonymous",
            template: "/wiki/rest/api/user/anonymous",
            segments: &[Fixed("anonymous")],
            operations: &[GetAnonymousUser],
            shared: true,
            resource: None,
            objects: Objects::User,
            default_ttl: 3600,
        },
        Spec {
            name: "current",
            template: "/wiki/rest/api/user/current",
            segments: &[Fixed("current")],
            operations: &[GetCurrentUser],
            shared: false,
            resource: None,
            objects: Objects::User,
            default_ttl: 60,
        },
        Spec {
            name: "memberof",
            template: "/wiki/rest/api/user/memberof",
            segments: &[Fixed("memberof")],
            operations: &[GetGroupMembershipsForUser],
            shared: false,
            resource: None,
            objects: Objects::UsersOrGroups,
            default_ttl: 120,
        },
        Spec {
            name: "bulk",
            template: "/wiki/rest/api/user/bulk",
            segments: &[Fixed("bulk")],
            operations: &[GetBulkUserLookup],
            shared: false,
            resource: None,
            objects: Objects::UsersOrGroups,
            default_ttl: 300,
        },
        Spec {
            name: "email",
            template: "/wiki/rest/api/user/email",
            segments: &[Fixed("email")],
            operations: &[GetPrivacyUnsafeUserEmail],
            shared: false,
            resource: None,
            objects: Objects::Record,
            default_ttl: 600,
        },
        Spec {
            name: "email_bulk",
            template: "/wiki/rest/api/user/email/bulk",
            segments: &[Fixed("email"), Fixed("bulk")],
            operations: &[GetPrivacyUnsafeUserEmailBulk],
            shared: false,
            resource: None,
            objects: Objects::Records,
            default_ttl: 600,
        },
        Spec {
            name: "watch_content",
            template: "/wiki/rest/api/user/watch/content/{contentId}",
            segments: &[Fixed("watch"), Fixed("content"), Param("contentId")],
            operations: &[
                GetContentWatchStatus,
                AddContentWatcher,
                RemoveContentWatcher,
            ],
            shared: false,
            resource: Some(Resource::Watch(WatchKind::Content)),
            objects: Objects::Nothing,
            default_ttl: 60,
        },
        Spec {
            name: "watch_label",
            template: "/wiki/rest/api/user/watch/label/{labelName}",
            segments: &[Fixed("watch"), Fixed("label"), Param("labelName")],
            operations: &[IsWatchingLabel, AddLabelWatcher, RemoveLabelWatcher],
            shared: false,
            resource: Some(Resource::Watch(WatchKind::Label)),
            objects: Objects::Nothing,
            default_ttl: 60,
        },
        Spec {
            name: "watch_space",
            template: "/wiki/rest/api/user/watch/space/{spaceKey}",
            segments: &[Fixed("watch"), Fixed("space"), Param("spaceKey")],
            operations: &[IsWatchingSpace, AddSpaceWatcher, RemoveSpaceWatch],
            shared: false,
            resource: Some(Resource::Watch(WatchKind::Space)),
            objects: Objects::Nothing,
            default_ttl: 60,
        },
        Spec {
            name: "properties",
            template: "/wiki/rest/api/user/{userId}/property",
            segments: &[Param("userId"), Fixed("property")],
            operations: &[GetUserProperties],
            shared: false,
            resource: Some(Resource::Properties),
            objects: Objects::Records,
            default_ttl: 60,
        },
        Spec {
            name: "property",
            template: "/wiki/rest/api/user/{userId}/property/{key}",
            segments: &[Param("userId"), Fixed("property"), Param("key")],
            operations: &[
                GetUserProperty,
                UpdateUserProperty,
                CreateUserProperty,
                DeleteUserProperty,
            ],
            shared: false,
            resource: Some(Resource::Property),
            objects: Objects::Record,
            default_ttl: 60,
        },
    ]
};

impl Route {
    /// The route's row of the table.
    pub fn spec(self) -> &'static Spec {
        &TABLE[self as usize]
    }

    /// The `Allow` header of a 405 on this template: its operations' methods, in the table's
    /// order (HEAD wherever GET is), made once from the table.
    pub fn allow(self) -> &'static str {
        static ALLOW: LazyLock<Vec<String>> = LazyLock::new(|| {
            Route::ALL
                .iter()
                .map(|route| {
                    let methods: Vec<&str> = route
                        .spec()
                        .operations
                        .iter()
                        .flat_map(|op| match op.verb() {
                            Verb::Get => &["GET", "HEAD"][..],
                            Verb::Post => &["POST"],
                            Verb::Put => &["PUT"],
                            Verb::Delete => &["DELETE"],
                        })
                        .copied()
                        .collect();
                    methods.join(", ")
                })
                .collect()
        });
        &ALLOW[self.index()]
    }

    /// The route's position in [`Route::ALL`], for per-route arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The route a name (`memberof`, `watch_space`, …) names.
    pub fn named(name: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|route| route.name() == name)
    }

    /// The spec's path template, e.g. `/wiki/rest/api/user/{userId}/property/{key}`.
    pub fn template(self) -> &'static str {
        self.spec().template
    }

    /// The operations defined on this path, one per method.
    pub fn operations(self) -> &'static [Operation] {
        self.spec().operations
    }

    /// The route's name in config (`[cache.routes.NAME]`), tags (`route:NAME`) and metrics.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether the answer cannot depend on the caller, so that one cached copy may serve every
    /// caller. Only `/user/anonymous` describes nobody in particular.
    pub fn is_shared(self) -> bool {
        self.spec().shared
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

listed_enum! {
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
    "Every operation, in the spec's order."
}

/// The operations' rows: `operationId`, method, route; in [`Operation::ALL`] order.
static OPERATIONS: [(&str, Verb, Route); 21] = [
    ("getUser", Verb::Get, Route::User),
    ("getAnonymousUser", Verb::Get, Route::Anonymous),
    ("getCurrentUser", Verb::Get, Route::Current),
    ("getGroupMembershipsForUser", Verb::Get, Route::MemberOf),
    ("getBulkUserLookup", Verb::Get, Route::Bulk),
    ("getPrivacyUnsafeUserEmail", Verb::Get, Route::Email),
    ("getPrivacyUnsafeUserEmailBulk", Verb::Get, Route::EmailBulk),
    ("getContentWatchStatus", Verb::Get, Route::WatchContent),
    ("addContentWatcher", Verb::Post, Route::WatchContent),
    ("removeContentWatcher", Verb::Delete, Route::WatchContent),
    ("isWatchingLabel", Verb::Get, Route::WatchLabel),
    ("addLabelWatcher", Verb::Post, Route::WatchLabel),
    ("removeLabelWatcher", Verb::Delete, Route::WatchLabel),
    ("isWatchingSpace", Verb::Get, Route::WatchSpace),
    ("addSpaceWatcher", Verb::Post, Route::WatchSpace),
    ("removeSpaceWatch", Verb::Delete, Route::WatchSpace),
    ("getUserProperties", Verb::Get, Route::Properties),
    ("getUserProperty", Verb::Get, Route::Property),
    ("updateUserProperty", Verb::Put, Route::Property),
    ("createUserProperty", Verb::Post, Route::Property),
    ("deleteUserProperty", Verb::Delete, Route::Property),
];

impl Operation {
    /// The spec's `operationId`.
    pub fn id(self) -> &'static str {
        OPERATIONS[self as usize].0
    }

    /// The method the spec defines this operation for.
    pub fn verb(self) -> Verb {
        OPERATIONS[self as usize].1
    }

    /// The path template this operation lives on.
    pub fn route(self) -> Route {
        OPERATIONS[self as usize].2
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

    /// The account a read of this route is about, as it names it: the `userId` of a
    /// property's path, or the one `accountId` of the query of a user, membership, email or
    /// watch lookup (`None`: it names none, or several). What an account's purge reaches.
    pub fn account<'q>(&'q self, query: Option<&'q str>) -> Option<Cow<'q, str>> {
        match self.route() {
            Route::Properties | Route::Property => self.param("userId").map(Cow::Borrowed),
            Route::User
            | Route::MemberOf
            | Route::Email
            | Route::WatchContent
            | Route::WatchLabel
            | Route::WatchSpace => {
                let mut named = crate::query::pairs(query?)
                    .filter(|(name, _)| name.as_ref() == b"accountId")
                    .map(|(_, value)| value);
                let id = named.next()?;
                if named.next().is_some() || id.contains(&b',') || id.is_empty() {
                    return None;
                }
                match id {
                    Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
                    Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
                }
            }
            _ => None,
        }
    }

    /// The tag of the resource a read of this route observes, which writes invalidate.
    /// Reads of routes no write in the API can change have none.
    pub fn resource_tag(&self) -> Option<Tag> {
        let param = |name| self.param(name).unwrap_or_default().to_owned();
        Some(match self.route().spec().resource? {
            Resource::Watch(kind) => {
                let (_, id) = self.params().next()?;
                Tag::Watch {
                    kind,
                    id: id.to_owned(),
                }
            }
            Resource::Properties => Tag::Properties {
                user: param("userId"),
            },
            Resource::Property => Tag::Property {
                user: param("userId"),
                key: param("key"),
            },
        })
    }

    /// The tags a successful write changes: every cached read of the same watch resource, for
    /// every caller and query; or the property itself and every page of its user's listing.
    pub fn invalidates(&self) -> Vec<Tag> {
        if !self.operation.verb().is_write() {
            return Vec::new();
        }
        let mut tags: Vec<Tag> = self.resource_tag().into_iter().collect();
        if let Some(Tag::Property { user, .. }) = tags.first() {
            let user = user.clone();
            tags.push(Tag::Properties { user });
        }
        tags
    }
}

/// What a watch is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchKind {
    Content,
    Label,
    Space,
}

impl WatchKind {
    fn as_str(self) -> &'static str {
        match self {
            WatchKind::Content => "content",
            WatchKind::Label => "label",
            WatchKind::Space => "space",
        }
    }
}

/// A set of cached reads that one write (or an operator's purge) invalidates together; written
/// `route:NAME`, `watch:KIND:ID`, `property:USER:KEY`, `properties:USER`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tag {
    /// Every cached read of a route.
    Route(Route),
    /// Reads of one watch (content, label or space), for every caller and query.
    Watch { kind: WatchKind, id: String },
    /// Reads of one user property.
    Property { user: String, key: String },
    /// Every page of one user's property listing.
    Properties { user: String },
    /// Everything cached about one account: its user object (single and bulk lookups), its
    /// memberships, email, watches asked by account id, and properties — an operator's purge
    /// only (a renamed or deleted user, an erasure request); no write bumps it.
    Account { id: String },
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tag::Route(route) => write!(f, "route:{}", route.name()),
            Tag::Watch { kind, id } => write!(f, "watch:{}:{id}", kind.as_str()),
            Tag::Property { user, key } => write!(f, "property:{user}:{key}"),
            Tag::Properties { user } => write!(f, "properties:{user}"),
            Tag::Account { id } => write!(f, "account:{id}"),
        }
    }
}

/// A tag an operator wrote that names nothing wikigate caches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown tag `{0}`: route:NAME, watch:content|label|space:ID, property:USER:KEY, properties:USER or account:ID"
)]
pub struct UnknownTag(String);

impl std::str::FromStr for Tag {
    type Err = UnknownTag;

    /// An operator's tag (`DELETE /admin/cache?tag=…`). Account ids hold colons
    /// (`712020:…`) and property keys cannot, so a property's key is what follows the last one.
    fn from_str(text: &str) -> Result<Tag, UnknownTag> {
        let unknown = || UnknownTag(text.to_owned());
        let (kind, rest) = text.split_once(':').ok_or_else(unknown)?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned()).ok_or_else(unknown);
        match kind {
            "route" => Route::named(rest).map(Tag::Route).ok_or_else(unknown),
            "watch" => {
                let (kind, id) = rest.split_once(':').ok_or_else(unknown)?;
                let kind = [WatchKind::Content, WatchKind::Label, WatchKind::Space]
                    .into_iter()
                    .find(|k| k.as_str() == kind)
                    .ok_or_else(unknown)?;
                Ok(Tag::Watch {
                    kind,
                    id: non_empty(id)?,
                })
            }
            "property" => {
                let (user, key) = rest.rsplit_once(':').ok_or_else(unknown)?;
                Ok(Tag::Property {
                    user: non_empty(user)?,
                    key: non_empty(key)?,
                })
            }
            "properties" => Ok(Tag::Properties {
                user: non_empty(rest)?,
            }),
            "account" => Ok(Tag::Account {
                id: non_empty(rest)?,
            }),
            _ => Err(unknown()),
        }
    }
}

/// At most two parameters per template (`{userId}` and `{key}`), decoded without allocating
/// when they carry no percent-escapes.
type Params<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// The most segments a template has after [`API_PREFIX`] (`{userId}/property/{key}`).
const MAX_SEGMENTS: usize = 3;

/// Resolves a method and a request path (without the query) to an operation.
pub fn resolve<'a>(method: &Method, path: &'a str) -> Result<Resolved<'a>, RouteError> {
    let rest = path.strip_prefix(API_PREFIX).ok_or(RouteError::NotFound)?;
    let rest = match rest {
        "" => "",
        "/" => return Err(RouteError::NotFound),
        _ => rest.strip_prefix('/').ok_or(RouteError::NotFound)?,
    };
    let mut held = [""; MAX_SEGMENTS];
    let mut count = 0;
    if !rest.is_empty() {
        for segment in rest.split('/') {
            // More segments than any template has: no route.
            *held.get_mut(count).ok_or(RouteError::NotFound)? = segment;
            count += 1;
        }
    }
    let segments = &held[..count];

    let route = Route::ALL
        .into_iter()
        .find(|route| template_matches(route.spec().segments, segments))
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
    for (segment, raw) in route.spec().segments.iter().zip(segments) {
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
        allow: route.allow(),
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
mod tests;
