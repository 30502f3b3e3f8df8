//! Links that always work: Confluence's `_links` pointed at wikigate where wikigate serves
//! them, left on the site where it does not, and redirects for what lands on wikigate anyway.
//!
//! Confluence's `_links.base` (`https://SITE.atlassian.net/wiki`) and `_links.self` are
//! absolute; `next`, `prev`, `webui`, `tinyui` and friends are relative to `base`. With
//! `server.public_url` set, wikigate rewrites, in every stored answer, decoded:
//! - every `_links.base` that is the site's own base (the answer's top-level one) to
//!   `{public_url}/wiki`, so that `base + next` pages through wikigate;
//! - every `_links.self` under `{base}/rest/api/user` (the API wikigate serves) to the same
//!   place on wikigate.
//!
//! Every other link stays as it is: a group's or a space's `self` (`/rest/api/group/…`,
//! `/rest/api/space/…`) keeps pointing at the site. Links relative to a rewritten `base` that
//! are not the user API (`base + webui`, `tinyui`, avatars, `/wiki/rest/api/space/…`) land on
//! wikigate, which answers GET and HEAD under `/wiki/` outside the user API with a redirect
//! to the same path on the site ([`Links::redirect`]) — never by proxying them.
//!
//! Invariants: without `public_url`, bodies are never parsed or touched (byte-identical);
//! a body that is not JSON, or has no top-level `_links.base`, is left as it is; a redirect
//! only ever leads to the site's own base, never to a host a request named.

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use serde_json::Value;

use crate::config::UpstreamUrl;
use crate::routes::API_PREFIX;

/// The path below `/wiki` that the user API lives at.
const USER_API: &str = "/rest/api/user";

/// Where links lead: the gateway's public URL, and the site's base as answers name it.
#[derive(Debug)]
pub struct Links {
    /// `{server.public_url}/wiki`, when `public_url` is set.
    public_base: Option<String>,
    /// The site's `_links.base`, as the latest rewritten answer named it; until then, the
    /// upstream URL with `/wiki` (right for `https://SITE.atlassian.net`).
    site_base: ArcSwap<String>,
}

impl Links {
    pub fn new(public_url: Option<&str>, upstream: &UpstreamUrl) -> Links {
        Links {
            public_base: public_url.map(|url| format!("{}/wiki", url.trim_end_matches('/'))),
            site_base: ArcSwap::from_pointee(format!("{upstream}/wiki")),
        }
    }

    /// Whether stored answers are rewritten at all.
    pub fn rewrites(&self) -> bool {
        self.public_base.is_some()
    }

    /// Rewrites the `_links` of a JSON answer; `None` when nothing changed.
    pub fn rewrite(&self, body: &[u8]) -> Option<Bytes> {
        self.public_base.as_ref()?;
        let mut value: Value = serde_json::from_slice(body).ok()?;
        self.rewrite_json(&mut value)
            .then(|| Bytes::from(value.to_string()))
    }

    /// Rewrites the `_links` of a parsed answer in place, by the site base its top-level
    /// `_links.base` names; whether anything changed.
    pub fn rewrite_json(&self, value: &mut Value) -> bool {
        let Some(public_base) = &self.public_base else {
            return false;
        };
        let Some(site_base) = value
            .pointer("/_links/base")
            .and_then(Value::as_str)
            .map(|base| base.trim_end_matches('/').to_owned())
        else {
            return false;
        };
        if !site_base.contains("://") || site_base == *public_base {
            return false;
        }
        if **self.site_base.load() != site_base {
            self.site_base.store(std::sync::Arc::new(site_base.clone()));
        }
        let mut changed = false;
        rewrite_value(value, &site_base, public_base, &mut changed);
        changed
    }

    /// A `_links.self` of an object that came without a `base` of its own (a bulk lookup's
    /// results), rewritten by `site_base` when it is the user API.
    pub fn rewrite_self(&self, url: &str, site_base: &str) -> Option<String> {
        let public_base = self.public_base.as_ref()?;
        user_api_url(url, site_base.trim_end_matches('/'), public_base)
    }

    /// Where a GET or HEAD for `path_and_query` is sent, when it is a path below `/wiki/`
    /// outside the user API: the same path below the site's base. `None` for every other
    /// path (a 404), and when the site's base would lead back to wikigate itself.
    pub fn redirect(&self, path: &str, path_and_query: &str) -> Option<HeaderValue> {
        if path == API_PREFIX || path.starts_with(&format!("{API_PREFIX}/")) {
            return None;
        }
        let below_wiki = path_and_query.strip_prefix("/wiki/")?;
        let site_base = self.site_base.load();
        if self
            .public_base
            .as_deref()
            .is_some_and(|public| origin(public) == origin(&site_base))
        {
            return None;
        }
        HeaderValue::from_str(&format!("{site_base}/{below_wiki}")).ok()
    }
}

/// `scheme://authority` of an absolute URL.
fn origin(url: &str) -> &str {
    let Some(after_scheme) = url.find("://").map(|i| i + 3) else {
        return url;
    };
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// `url` moved from `site_base` to `public_base` when it is the user API (`{base}/rest/api/user`
/// followed by nothing, `/`, `?` or `#`).
fn user_api_url(url: &str, site_base: &str, public_base: &str) -> Option<String> {
    let rest = url.strip_prefix(site_base)?;
    let after = rest.strip_prefix(USER_API)?;
    matches!(after.chars().next(), None | Some('/' | '?' | '#'))
        .then(|| format!("{public_base}{rest}"))
}

fn rewrite_value(value: &mut Value, site_base: &str, public_base: &str, changed: &mut bool) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "_links"
                    && let Value::Object(links) = child
                {
                    if let Some(Value::String(base)) = links.get_mut("base")
                        && base.trim_end_matches('/') == site_base
                    {
                        *base = public_base.to_owned();
                        *changed = true;
                    }
                    if let Some(Value::String(url)) = links.get_mut("self")
                        && let Some(rewritten) = user_api_url(url, site_base, public_base)
                    {
                        *url = rewritten;
                        *changed = true;
                    }
                } else {
                    rewrite_value(child, site_base, public_base, changed);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_value(item, site_base, public_base, changed);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(public: Option<&str>) -> Links {
        Links::new(public, &"https://x.atlassian.net".parse().unwrap())
    }

    fn rewritten(body: &str) -> Value {
        serde_json::from_slice(
            &links(Some("https://gw.example"))
                .rewrite(body.as_bytes())
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn base_and_user_api_selfs_move_to_the_gateway_everything_else_stays() {
        let value = rewritten(
            r#"{"results":[{"accountId":"a","_links":{"self":"https://x.atlassian.net/wiki/rest/api/user?accountId=a"}},
                {"type":"group","name":"g","_links":{"self":"https://x.atlassian.net/wiki/rest/api/group/by-id?id=g"}},
                {"personalSpace":{"_links":{"webui":"/spaces/~a","self":"https://x.atlassian.net/wiki/rest/api/space/~a"}}}],
            "_links":{"base":"https://x.atlassian.net/wiki","context":"/wiki","self":"https://x.atlassian.net/wiki/rest/api/user/memberof?accountId=a","next":"/rest/api/user/memberof?accountId=a&start=1"}}"#,
        );
        assert_eq!(value["_links"]["base"], "https://gw.example/wiki");
        assert_eq!(
            value["_links"]["self"],
            "https://gw.example/wiki/rest/api/user/memberof?accountId=a"
        );
        assert_eq!(value["_links"]["context"], "/wiki");
        assert_eq!(
            value["_links"]["next"],
            "/rest/api/user/memberof?accountId=a&start=1"
        );
        assert_eq!(
            value["results"][0]["_links"]["self"],
            "https://gw.example/wiki/rest/api/user?accountId=a"
        );
        assert_eq!(
            value["results"][1]["_links"]["self"],
            "https://x.atlassian.net/wiki/rest/api/group/by-id?id=g",
            "a group is not served by wikigate"
        );
        let space = &value["results"][2]["personalSpace"]["_links"];
        assert_eq!(
            space["self"],
            "https://x.atlassian.net/wiki/rest/api/space/~a"
        );
        assert_eq!(space["webui"], "/spaces/~a");
    }

    #[test]
    fn a_base_with_a_path_prefix_moves_whole() {
        let value = rewritten(
            r#"{"_links":{"base":"https://api.atlassian.com/ex/confluence/c1/wiki","self":"https://api.atlassian.com/ex/confluence/c1/wiki/rest/api/user/current"}}"#,
        );
        assert_eq!(value["_links"]["base"], "https://gw.example/wiki");
        assert_eq!(
            value["_links"]["self"],
            "https://gw.example/wiki/rest/api/user/current"
        );
    }

    #[test]
    fn foreign_urls_lookalikes_and_non_json_are_left_alone() {
        let links = links(Some("https://gw.example"));
        assert!(links.rewrite(b"not json").is_none());
        assert!(links.rewrite(br#"{"watching":true}"#).is_none());
        let value = rewritten(
            r#"{"_links":{"base":"https://x.atlassian.net/wiki","self":"https://elsewhere.example/wiki/rest/api/user"}}"#,
        );
        assert_eq!(
            value["_links"]["self"],
            "https://elsewhere.example/wiki/rest/api/user"
        );
        let value = rewritten(
            r#"{"_links":{"base":"https://x.atlassian.net/wiki","self":"https://x.atlassian.net/wiki/rest/api/users/x"}}"#,
        );
        assert_eq!(
            value["_links"]["self"],
            "https://x.atlassian.net/wiki/rest/api/users/x"
        );
        // Without a public URL nothing is parsed.
        assert!(
            self::links(None)
                .rewrite(br#"{"_links":{"base":"https://x.atlassian.net/wiki"}}"#)
                .is_none()
        );
    }

    #[test]
    fn redirects_lead_to_the_site_for_what_wikigate_does_not_serve() {
        let links = links(Some("https://gw.example"));
        assert_eq!(
            links
                .redirect("/wiki/spaces/~a", "/wiki/spaces/~a")
                .unwrap(),
            "https://x.atlassian.net/wiki/spaces/~a"
        );
        links.rewrite(br#"{"_links":{"base":"https://site.example/wiki/"}}"#);
        assert_eq!(
            links
                .redirect(
                    "/wiki/rest/api/space/~a",
                    "/wiki/rest/api/space/~a?expand=x"
                )
                .unwrap(),
            "https://site.example/wiki/rest/api/space/~a?expand=x"
        );
        for path in [
            "/wiki/rest/api/user/nope",
            "/wiki/rest/api/user",
            "/admin",
            "/wiki",
        ] {
            assert!(links.redirect(path, path).is_none(), "{path}");
        }
        // A site base on wikigate's own origin would loop: no redirect.
        let looping = Links::new(
            Some("http://127.0.0.1:1"),
            &"http://127.0.0.1:1".parse().unwrap(),
        );
        assert!(looping.redirect("/wiki/x", "/wiki/x").is_none());
    }
}
