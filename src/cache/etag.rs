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

/// The ETags of one body: `"HEX"` for identity, `"HEX-gzip"` for gzip, `HEX` the first 64
/// bits of its BLAKE3 digest in hex. A validator tells the versions of one resource apart, for
/// which 64 bits are ample; an entry keeps the 8 bytes and writes the text when it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ETags {
    digest: [u8; 8],
}

/// `"` + 16 hex digits + `-gzip"`: the longest text.
const LONGEST: usize = 23;

impl ETags {
    pub(super) fn of(body: &[u8]) -> ETags {
        let mut digest = [0; 8];
        digest.copy_from_slice(&blake3::hash(body).as_bytes()[..8]);
        ETags { digest }
    }

    /// The validator of `coding`'s representation.
    pub(super) fn get(&self, coding: Coding) -> HeaderValue {
        let (text, len) = self.text(coding);
        HeaderValue::from_bytes(&text[..len]).expect("hex is a header value")
    }

    fn text(&self, coding: Coding) -> ([u8; LONGEST], usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"\"0000000000000000-gzip\"";
        for (n, byte) in self.digest.iter().enumerate() {
            text[1 + 2 * n] = HEX[usize::from(byte >> 4)];
            text[2 + 2 * n] = HEX[usize::from(byte & 0xf)];
        }
        match coding {
            Coding::Gzip => (text, LONGEST),
            Coding::Identity => {
                text[17] = b'"';
                (text, 18)
            }
        }
    }

    /// Whether the request's `If-None-Match` names either validator (or is `*`): both stand
    /// for the same content, so a client holding either may keep it. Weak comparison, as RFC
    /// 9110 §13.1.2 prescribes for `If-None-Match`.
    pub(super) fn matched_by(&self, request_headers: &HeaderMap) -> bool {
        // Most requests carry no validator: one lookup, then nothing to compare.
        if !request_headers.contains_key(header::IF_NONE_MATCH) {
            return false;
        }
        let [(identity, i), (gzip, g)] = [Coding::Identity, Coding::Gzip].map(|c| self.text(c));
        let ours = [&identity[..i], &gzip[..g]];
        list_tokens(request_headers, &header::IF_NONE_MATCH)
            .any(|tag| tag == "*" || ours.contains(&tag.trim_start_matches("W/").as_bytes()))
    }

    /// The digest, as the cluster's L2 format writes it.
    pub(super) fn digest(&self) -> [u8; 8] {
        self.digest
    }

    /// Read back from [`ETags::digest`]'s bytes; `None` unless there are 8.
    pub(super) fn from_digest(bytes: &[u8]) -> Option<ETags> {
        Some(ETags {
            digest: bytes.try_into().ok()?,
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
        for tag in [&identity, &gzip] {
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
        assert_eq!(ETags::from_digest(&etags.digest()), Some(etags));
        assert_eq!(identity.len(), 18);
        assert_eq!(
            gzip.to_str().unwrap(),
            format!("{}-gzip\"", &identity.to_str().unwrap()[..17])
        );
    }
}
