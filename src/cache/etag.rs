//! Validators: the strong `ETag`s of one body, one per representation (RFC 9110 §8.8.3: a
//! gzip representation is a representation of its own, with a validator of its own), and
//! `If-None-Match` matched against them.
//!
//! Invariant: both validators are made from the decoded body alone — the same content has the
//! same ETags on every replica, whichever representation upstream sent and whatever gzip level
//! made the other.

use http::header::{self, HeaderMap, HeaderValue};

use crate::coding::Coding;
use crate::forward::list_tokens;

/// The ETags of one body: `"HEX"` for identity, `"HEX-gzip"` for gzip, `HEX` the first 128
/// bits of its BLAKE3 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETags {
    identity: HeaderValue,
    gzip: HeaderValue,
}

impl ETags {
    pub fn of(body: &[u8]) -> ETags {
        let digest = blake3::hash(body);
        let hex = &digest.to_hex()[..32];
        let value = |tag: String| HeaderValue::from_str(&tag).expect("hex is a header value");
        ETags {
            identity: value(format!("\"{hex}\"")),
            gzip: value(format!("\"{hex}-gzip\"")),
        }
    }

    /// The validator of `coding`'s representation.
    pub fn get(&self, coding: Coding) -> &HeaderValue {
        match coding {
            Coding::Identity => &self.identity,
            Coding::Gzip => &self.gzip,
        }
    }

    /// Whether the request's `If-None-Match` names either validator (or is `*`): both stand
    /// for the same content, so a client holding either may keep it. Weak comparison, as RFC
    /// 9110 §13.1.2 prescribes for `If-None-Match`.
    pub fn matched_by(&self, request_headers: &HeaderMap) -> bool {
        // Most requests carry no validator: one lookup, then nothing to compare.
        if !request_headers.contains_key(header::IF_NONE_MATCH) {
            return false;
        }
        let ours = [self.identity.as_bytes(), self.gzip.as_bytes()];
        list_tokens(request_headers, &header::IF_NONE_MATCH)
            .any(|tag| tag == "*" || ours.contains(&tag.trim_start_matches("W/").as_bytes()))
    }

    /// The bytes they take (for an entry's weight).
    pub fn len(&self) -> usize {
        self.identity.len() + self.gzip.len()
    }

    /// Both, as the cluster's L2 format writes them.
    pub fn parts(&self) -> [&[u8]; 2] {
        [self.identity.as_bytes(), self.gzip.as_bytes()]
    }

    /// Read back from [`ETags::parts`]; `None` if either is not a header value.
    pub fn from_parts(identity: &[u8], gzip: &[u8]) -> Option<ETags> {
        Some(ETags {
            identity: HeaderValue::from_bytes(identity).ok()?,
            gzip: HeaderValue::from_bytes(gzip).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn if_none_match(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn each_representation_has_its_own_validator_and_either_matches() {
        let etags = ETags::of(b"{\"watching\":true}");
        let (identity, gzip) = (etags.get(Coding::Identity), etags.get(Coding::Gzip));
        assert_ne!(identity, gzip);
        assert_eq!(
            etags,
            ETags::of(b"{\"watching\":true}"),
            "from the content alone"
        );
        for tag in [identity, gzip] {
            let mut headers = HeaderMap::new();
            let listed = format!("\"x\", W/{}", tag.to_str().unwrap());
            headers.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&listed).unwrap(),
            );
            assert!(etags.matched_by(&headers), "{listed}");
        }
        assert!(etags.matched_by(&if_none_match("*")));
        assert!(!etags.matched_by(&if_none_match("\"other\"")));
        assert!(!etags.matched_by(&HeaderMap::new()));
        let [a, b] = etags.parts();
        assert_eq!(ETags::from_parts(a, b), Some(etags));
    }
}
