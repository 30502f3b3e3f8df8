//! Keeping clients on the gateway: rewrite Confluence's absolute `_links` to wikigate's origin.
//!
//! Confluence's `_links.base` and `_links.self` are absolute site URLs, so a client that pages
//! with `base + next` would leave the gateway after the first page and spend quota directly.
//! With `server.public_url` set, every `base` and `self` inside any `_links` object that starts
//! with the site's origin (taken from the answer's own top-level `_links.base`) is rewritten to
//! the public URL. `context` and relative links (`next`, `prev`) are left alone: they stay
//! correct against the rewritten `base`.
//!
//! Invariants: without `public_url`, bodies are never parsed or touched (byte-identical);
//! a body that is not JSON, or has no `_links.base`, is left as it is.

use bytes::Bytes;
use serde_json::Value;

/// Rewrites `_links` in a JSON answer; `None` when nothing changed.
pub fn rewrite(body: &[u8], public_url: &str) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let origin = site_origin(value.get("_links")?.get("base")?.as_str()?)?.to_owned();
    let mut changed = false;
    rewrite_value(&mut value, &origin, public_url, &mut changed);
    changed.then(|| Bytes::from(value.to_string()))
}

/// Rewrites one absolute URL that starts with `origin`.
pub fn rewrite_url(url: &str, origin: &str, public_url: &str) -> Option<String> {
    let rest = url.strip_prefix(origin)?;
    (rest.is_empty() || rest.starts_with('/')).then(|| format!("{public_url}{rest}"))
}

/// `scheme://authority` of an absolute URL.
pub fn site_origin(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

fn rewrite_value(value: &mut Value, origin: &str, public_url: &str, changed: &mut bool) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "_links"
                    && let Value::Object(links) = child
                {
                    for name in ["base", "self"] {
                        if let Some(Value::String(url)) = links.get_mut(name)
                            && let Some(rewritten) = rewrite_url(url, origin, public_url)
                        {
                            *url = rewritten;
                            *changed = true;
                        }
                    }
                } else {
                    rewrite_value(child, origin, public_url, changed);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_value(item, origin, public_url, changed);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_self_are_rewritten_everywhere_context_and_next_are_not() {
        let body = br#"{"results":[{"accountId":"a","_links":{"self":"https://x.atlassian.net/wiki/rest/api/user?accountId=a"}}],
            "_links":{"base":"https://x.atlassian.net/wiki","context":"/wiki","self":"https://x.atlassian.net/wiki/rest/api/user/bulk?accountId=a","next":"/rest/api/user/bulk?start=1"}}"#;
        let rewritten: Value =
            serde_json::from_slice(&rewrite(body, "https://gw.example").unwrap()).unwrap();
        assert_eq!(rewritten["_links"]["base"], "https://gw.example/wiki");
        assert_eq!(
            rewritten["_links"]["self"],
            "https://gw.example/wiki/rest/api/user/bulk?accountId=a"
        );
        assert_eq!(rewritten["_links"]["context"], "/wiki");
        assert_eq!(rewritten["_links"]["next"], "/rest/api/user/bulk?start=1");
        assert_eq!(
            rewritten["results"][0]["_links"]["self"],
            "https://gw.example/wiki/rest/api/user?accountId=a"
        );
    }

    #[test]
    fn foreign_urls_and_non_json_are_left_alone() {
        assert!(rewrite(b"not json", "https://gw.example").is_none());
        assert!(rewrite(br#"{"watching":true}"#, "https://gw.example").is_none());
        let body = br#"{"_links":{"base":"https://x.atlassian.net/wiki","self":"https://elsewhere.example/x"}}"#;
        let rewritten: Value =
            serde_json::from_slice(&rewrite(body, "https://gw.example").unwrap()).unwrap();
        assert_eq!(rewritten["_links"]["self"], "https://elsewhere.example/x");
        assert_eq!(
            rewrite_url(
                "https://x.atlassian.netevil/y",
                "https://x.atlassian.net",
                "https://gw"
            ),
            None
        );
    }
}
