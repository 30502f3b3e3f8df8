//! The CSRF guard for writes.
//!
//! wikigate sends `X-Atlassian-Token: no-check` on every write, which switches off Confluence's
//! own XSRF defence. So wikigate takes that defence over, before anything is forwarded:
//!
//! 1. `Sec-Fetch-Site: cross-site` — a browser says the write comes from another site: 403.
//! 2. An `Origin` that is not in `csrf.allowed_origins` (including `null`): 403.
//! 3. No `Authorization` header: a write authenticated by `Cookie` alone is exactly what CSRF
//!    abuses, so it is 403; a write with no credential at all is 401.
//!
//! Invariant: a write that reaches upstream carries an `Authorization` header and, if it came
//! from a browser, a same-site or allowed origin. No CORS headers are ever added.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::config::CsrfConfig;
use crate::error::GatewayError;

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

#[derive(Debug, Clone)]
pub struct CsrfGuard {
    /// Lower-cased origins; browsers send the scheme and host lower-case.
    allowed_origins: Vec<String>,
}

impl CsrfGuard {
    pub fn new(config: &CsrfConfig) -> CsrfGuard {
        CsrfGuard {
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Admits or refuses a write by its headers.
    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        if headers
            .get(&SEC_FETCH_SITE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(GatewayError::Forbidden(
                "cross-site writes are refused (Sec-Fetch-Site: cross-site)",
            ));
        }
        for origin in headers.get_all(header::ORIGIN) {
            if !self.origin_allowed(origin) {
                return Err(GatewayError::Forbidden(
                    "writes from this Origin are refused; see csrf.allowed_origins",
                ));
            }
        }
        if !headers.contains_key(header::AUTHORIZATION) {
            if headers.contains_key(header::COOKIE) {
                return Err(GatewayError::Forbidden(
                    "writes authenticated by cookie alone are refused; send an Authorization header",
                ));
            }
            return Err(GatewayError::Unauthorized(
                "writes through wikigate need an Authorization header",
            ));
        }
        Ok(())
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        origin.to_str().is_ok_and(|origin| {
            self.allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> CsrfGuard {
        CsrfGuard::new(&CsrfConfig {
            allowed_origins: vec!["https://Intranet.example".to_owned()],
        })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn authorized_server_to_server_write_passes() {
        assert!(
            guard()
                .check_write(&headers(&[("authorization", "Basic x")]))
                .is_ok()
        );
    }

    #[test]
    fn allowed_origin_passes_and_others_are_refused() {
        let g = guard();
        let ok = headers(&[
            ("authorization", "Basic x"),
            ("origin", "https://intranet.example"),
        ]);
        assert!(g.check_write(&ok).is_ok());
        for origin in [
            "https://evil.example",
            "null",
            "https://intranet.example.evil.example",
        ] {
            let mut h = headers(&[("authorization", "Basic x")]);
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            let err = g.check_write(&h).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::FORBIDDEN, "{origin}");
        }
    }

    #[test]
    fn cookie_only_and_cross_site_are_forbidden() {
        let g = guard();
        let cookie = headers(&[("cookie", "JSESSIONID=1")]);
        assert_eq!(g.check_write(&cookie).unwrap_err().status(), 403);
        let cross = headers(&[
            ("authorization", "Basic x"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(g.check_write(&cross).unwrap_err().status(), 403);
        assert_eq!(g.check_write(&HeaderMap::new()).unwrap_err().status(), 401);
    }
}
