//! Cookies that carry no identity, such as Atlassian's `atlassian.xsrf.token`.
//!
//! Atlassian's edge sets a fresh `atlassian.xsrf.token` on every answer, for Basic and OAuth
//! callers alike. It names nobody: it is the token Confluence's own pages send back with form
//! posts. wikigate adds `X-Atlassian-Token: no-check` to writes itself (behind its CSRF guard),
//! so its clients never need that token; and an answer that carries it would otherwise never
//! be stored, and a client with a cookie jar that sends it back would bypass the cache.
//!
//! Invariants (for the cookies named in `cache.ignored_cookies`):
//! - they never cross wikigate, in either direction: they are removed from requests before
//!   anything judges them (the cache's cookie bypass, the CSRF guard) and from every answer,
//!   whatever path it took;
//! - so they neither stop an answer from being stored nor are ever stored or replayed.
//!
//! Every other cookie keeps its meaning: a `Set-Cookie` for it keeps the answer out of the
//! cache, and a request that sends it bypasses the cache.

use http::{HeaderMap, HeaderValue, header};

/// The cookie names that carry no identity.
#[derive(Debug, Clone, Default)]
pub struct IgnoredCookies(Box<[String]>);

impl IgnoredCookies {
    pub fn new(names: &[String]) -> IgnoredCookies {
        IgnoredCookies(names.iter().map(|n| n.trim().to_owned()).collect())
    }

    fn ignores(&self, name: &str) -> bool {
        self.0.iter().any(|ignored| ignored == name.trim())
    }

    /// Removes the ignored cookies from a request's `Cookie` fields, and fields left empty.
    pub fn strip_request(&self, headers: &mut HeaderMap) {
        if self.0.is_empty() || !headers.contains_key(header::COOKIE) {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| {
                let Ok(text) = value.to_str() else {
                    return Some(value.clone());
                };
                let pairs: Vec<&str> = text
                    .split(';')
                    .map(str::trim)
                    .filter(|pair| !pair.is_empty())
                    .filter(|pair| !self.ignores(pair.split('=').next().unwrap_or_default()))
                    .collect();
                (!pairs.is_empty())
                    .then(|| HeaderValue::from_str(&pairs.join("; ")).ok())
                    .flatten()
            })
            .collect();
        headers.remove(header::COOKIE);
        for value in kept {
            headers.append(header::COOKIE, value);
        }
    }

    /// Removes the `Set-Cookie` fields of ignored cookies from an answer.
    pub fn strip_response(&self, headers: &mut HeaderMap) {
        if self.0.is_empty() || !headers.contains_key(header::SET_COOKIE) {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|value| {
                let name = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.split('=').next())
                    .unwrap_or_default();
                !self.ignores(name)
            })
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xsrf() -> IgnoredCookies {
        IgnoredCookies::new(&["atlassian.xsrf.token".to_owned()])
    }

    #[test]
    fn ignored_cookies_leave_requests_and_the_rest_stay() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("atlassian.xsrf.token=abc_lin"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; atlassian.xsrf.token=abc_lin;tenant.session.token=s"),
        );
        xsrf().strip_request(&mut headers);
        let left: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; tenant.session.token=s"]);

        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("atlassian.xsrf.token=abc_lin"),
        );
        xsrf().strip_request(&mut only);
        assert!(!only.contains_key(header::COOKIE));
    }

    #[test]
    fn ignored_set_cookies_leave_answers_and_the_rest_stay() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "atlassian.xsrf.token=1b2c_lin; Path=/; SameSite=None; Secure",
            ),
        );
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_static("session=x; HttpOnly"),
        );
        xsrf().strip_response(&mut headers);
        let left: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["session=x; HttpOnly"]);
        let mut none = HeaderMap::new();
        IgnoredCookies::default().strip_response(&mut none);
        assert!(none.is_empty());
    }
}
