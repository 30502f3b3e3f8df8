//! The fake site's answers to the 21 operations, written as Confluence writes them (links,
//! expansions, errors), for a caller the handler has authenticated.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::data::{Data, DemoUser, Property, Site, WatchKind, find_user};
use super::edge::{BulkObjects, Shape};
use crate::body::Body;
use crate::routes::{self, Operation};

/// The query string as decoded name/value pairs, in order.
pub(super) struct Query(pub(super) Vec<(String, String)>);

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Query {
        let text = |bytes: std::borrow::Cow<'_, [u8]>| String::from_utf8_lossy(&bytes).into_owned();
        let pairs = crate::query::pairs(query.unwrap_or(""))
            .map(|(k, v)| (text(k), text(v)))
            .collect();
        Query(pairs)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The accounts a bulk lookup names: first occurrences only, and (as Confluence documents)
    /// only the first 200.
    pub(super) fn accounts(&self) -> Vec<&str> {
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
    pub(super) fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub(super) fn number(&self, name: &str, default: u64) -> Result<u64, Failure> {
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

pub(super) type Failure = (StatusCode, String);

pub(super) fn fail(status: StatusCode, message: &str) -> Failure {
    (status, message.to_owned())
}

/// What an operation answers when it succeeds.
pub(super) enum Answer {
    Json(StatusCode, Value),
    NoContent,
}

impl Answer {
    pub(super) fn into_response(self) -> Response<Body> {
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

pub(super) struct Ctx<'a> {
    pub(super) site: &'a Site,
    /// The site URL the answer is written for: the configured one, or — like proxy-aware
    /// applications do — one built from `X-Forwarded-Host`/`-Proto` when the request has them.
    pub(super) base: String,
    pub(super) caller: Option<&'static DemoUser>,
    pub(super) query: &'a Query,
    pub(super) resolved: &'a routes::Resolved<'a>,
    pub(super) path_and_query: &'a str,
    pub(super) xsrf_ok: bool,
    pub(super) body: &'a Bytes,
    pub(super) shape: Shape,
    pub(super) bulk_objects: BulkObjects,
}

impl Ctx<'_> {
    pub(super) fn links(&self, self_path: &str) -> Value {
        json!({ "base": self.base, "context": "/wiki", "self": format!("{}{}", self.base, self_path) })
    }

    pub(super) fn answer(&self) -> Result<Answer, Failure> {
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
    pub(super) fn caller(&self) -> Result<&'static DemoUser, Failure> {
        self.caller.ok_or_else(|| {
            fail(
                StatusCode::UNAUTHORIZED,
                "This request needs authentication",
            )
        })
    }

    pub(super) fn emails(&self) -> Result<Answer, Failure> {
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
    pub(super) fn watch(&self, watching: bool) -> Result<Answer, Failure> {
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

    pub(super) fn create_property(&self) -> Result<Answer, Failure> {
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

    pub(super) fn update_property(&self) -> Result<Answer, Failure> {
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

    pub(super) fn data(&self) -> parking_lot::MutexGuard<'_, Data> {
        self.site.data.lock()
    }

    pub(super) fn json(&self, value: Value) -> Answer {
        Answer::Json(StatusCode::OK, value)
    }

    pub(super) fn expands(&self, what: &str) -> bool {
        self.query.list("expand").contains(&what)
    }

    pub(super) fn required_user(&self, param: &str) -> Result<&'static DemoUser, Failure> {
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

    pub(super) fn anonymous(&self) -> Value {
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
    pub(super) fn user_json(&self, user: &DemoUser, viewer: &DemoUser) -> Value {
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
            "_expandable": { "operations": "", "personalSpace": "" },
            "_links": self.links(&format!("/rest/api/user?accountId={}", user.account_id)),
        });
        if self.bulk_objects == BulkObjects::Differ {
            value["externalCollaborator"] = json!(user.api_token.is_empty());
            value["isGuest"] = json!(false);
        }
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

    pub(super) fn memberof(&self) -> Result<Answer, Failure> {
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

    pub(super) fn bulk(&self, caller: &DemoUser) -> Result<Answer, Failure> {
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
                // The spec's `BulkUserLookup`: the single answer less the site's links (which
                // the envelope states once) and what only single answers carry.
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

    pub(super) fn require_xsrf(&self) -> Result<(), Failure> {
        if self.xsrf_ok {
            Ok(())
        } else {
            Err(fail(StatusCode::FORBIDDEN, "XSRF check failed"))
        }
    }

    /// Whose watch, of what: the caller's, or (admins only) the `accountId` given.
    pub(super) fn watch_target(
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
    pub(super) fn property_owner(
        &self,
        caller: &'static DemoUser,
    ) -> Result<&'static DemoUser, Failure> {
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
    pub(super) fn property_target(
        &self,
        caller: &'static DemoUser,
    ) -> Result<(&'static str, String), Failure> {
        let owner = self.property_owner(caller)?;
        let key = self.resolved.param("key").unwrap_or_default().to_owned();
        Ok((owner.account_id, key))
    }

    pub(super) fn list_properties(&self, caller: &'static DemoUser) -> Result<Answer, Failure> {
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
    pub(super) fn property_value(&self) -> Result<Value, Failure> {
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

    pub(super) fn no_property(&self, key: &str) -> Failure {
        fail(
            StatusCode::NOT_FOUND,
            &format!("No property found with key: {key}"),
        )
    }

    pub(super) fn property_json(&self, owner: &str, key: &str, property: &Property) -> Value {
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

/// The current UTC time as `2022-02-01T12:00:00.111Z`.
pub(super) fn now_iso8601() -> String {
    crate::rfc3339::millis(std::time::SystemTime::now())
}
