//! Content coding: which codings a client accepts, and gzip in both directions, bounded.
//!
//! wikigate owns content coding on the routes it caches. It asks upstream for gzip (fewer bytes
//! from the cloud), decodes wherever it must read the JSON, stores the representations its
//! clients ask for, and gives every client a coding it accepts. Only two codings exist here:
//! `identity` and `gzip` (`x-gzip` is its alias).
//!
//! Invariants:
//! - A client that did not ask for gzip never gets it. A request without `Accept-Encoding` (or
//!   with an empty one) accepts identity only, as every proxy treats it in practice.
//! - `q`-values are honoured, `q=0` refuses a coding, and `*` stands for every coding the field
//!   does not name; identity is acceptable unless refused by name or by `*;q=0`.
//! - Decoding never produces more than its caller's limit (a gzip bomb stops there), and a
//!   corrupt or truncated gzip body is an error, never a shorter body.

use std::io::{Read as _, Write as _};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};

use crate::forward::list_tokens;

/// A content coding wikigate can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` value, `None` for identity (which is never named).
    pub fn header_value(self) -> Option<HeaderValue> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some(HeaderValue::from_static("gzip")),
        }
    }

    /// The coding a response's `Content-Encoding` names: `Ok(None)` for none (or identity),
    /// `Err` with the name for a coding wikigate cannot decode.
    pub fn of_response(headers: &HeaderMap) -> Result<Coding, String> {
        let mut codings = list_tokens(headers, &header::CONTENT_ENCODING)
            .filter(|c| !c.eq_ignore_ascii_case("identity"));
        match (codings.next(), codings.next()) {
            (None, _) => Ok(Coding::Identity),
            (Some(c), None)
                if c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip") =>
            {
                Ok(Coding::Gzip)
            }
            (Some(c), None) => Err(c.to_owned()),
            (Some(a), Some(b)) => Err(format!("{a}, {b}")),
        }
    }
}

/// What mainstream HTTP clients send by default (requests, urllib3, axios, Node's fetch, curl
/// `--compressed`, browsers): gzip and identity both at q=1, known without parsing.
const COMMON: [&[u8]; 6] = [
    b"gzip, deflate",
    b"gzip, deflate, br",
    b"gzip, deflate, br, zstd",
    b"gzip, compress, deflate, br",
    b"deflate, gzip, br, zstd",
    b"gzip",
];

/// What a request's `Accept-Encoding` allows, as quality values in thousandths (0 = refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    gzip: u16,
    identity: u16,
}

impl Accepts {
    /// Identity only: what a request without `Accept-Encoding` gets.
    pub const IDENTITY: Accepts = Accepts {
        gzip: 0,
        identity: 1000,
    };

    /// Reads a request's `Accept-Encoding` (RFC 9110 §12.5.3), as bytes: a header value is
    /// not text, and this runs on every hit.
    pub fn of(headers: &HeaderMap) -> Accepts {
        let mut values = headers.get_all(header::ACCEPT_ENCODING).iter();
        let Some(first) = values.next() else {
            return Accepts::IDENTITY;
        };
        let second = values.next();
        if second.is_none() && COMMON.contains(&first.as_bytes()) {
            return Accepts {
                gzip: 1000,
                identity: 1000,
            };
        }
        let values = std::iter::once(first).chain(second).chain(values);
        let (mut gzip, mut identity, mut star) = (None, None, None);
        for item in values.flat_map(|value| value.as_bytes().split(|b| *b == b',')) {
            let mut parts = item.split(|b| *b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let slot = if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip")
            {
                &mut gzip
            } else if name.eq_ignore_ascii_case(b"identity") {
                &mut identity
            } else if name == b"*" {
                &mut star
            } else {
                continue;
            };
            let q = parts
                .find_map(|p| {
                    let p = p.trim_ascii();
                    p.strip_prefix(b"q=").or(p.strip_prefix(b"Q="))
                })
                .map_or(1000, quality);
            // Several mentions of one coding: the most generous one counts.
            *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
        }
        Accepts {
            gzip: gzip.or(star).unwrap_or(0),
            identity: identity.or(star).unwrap_or(1000),
        }
    }

    pub fn gzip(self) -> bool {
        self.gzip > 0
    }

    pub fn identity(self) -> bool {
        self.identity > 0
    }

    /// The coding to send when both are at hand: the one the client rates higher, gzip on a
    /// tie (fewer bytes); identity when the client accepts neither (RFC 9110 lets a server
    /// ignore an `Accept-Encoding` nothing satisfies rather than refuse).
    pub fn preferred(self) -> Coding {
        if self.gzip > 0 && self.gzip >= self.identity {
            Coding::Gzip
        } else {
            Coding::Identity
        }
    }

    pub fn allows(self, coding: Coding) -> bool {
        match coding {
            Coding::Identity => self.identity(),
            Coding::Gzip => self.gzip(),
        }
    }
}

/// A `q` value (`0`, `0.5`, `1.000`) in thousandths; anything unreadable counts as 0.
fn quality(text: &[u8]) -> u16 {
    let (whole, fraction) = match text.iter().position(|b| *b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &[][..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    let thousandths = fraction
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
    match whole {
        b"0" => thousandths,
        b"1" if thousandths == 0 => 1000,
        _ => 0,
    }
}

/// Why a gzip body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("it inflates past {limit} bytes")]
    TooLarge { limit: usize },
    #[error("it is not valid gzip")]
    Corrupt,
}

/// Decodes a gzip body (every member of it), producing at most `limit` bytes.
pub fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    if compressed.is_empty() {
        return Ok(Bytes::new());
    }
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut plain = Vec::with_capacity(compressed.len().saturating_mul(3).min(limit));
    // One byte past the limit tells "exactly at the limit" from "over it".
    match decoder
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut plain)
    {
        Ok(_) if plain.len() > limit => Err(DecodeError::TooLarge { limit }),
        Ok(_) => Ok(Bytes::from(plain)),
        Err(_) => Err(DecodeError::Corrupt),
    }
}

/// The gzip level of what wikigate compresses itself: zlib's default, which is within a few
/// bytes of the best for JSON of a few KB and twice as fast (`benches/hot_path.rs`).
const LEVEL: u32 = 6;

/// Compresses `plain` as one gzip member.
pub fn gzip(plain: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 2 + 64),
        flate2::Compression::new(LEVEL),
    );
    encoder
        .write_all(plain)
        .expect("writing to a Vec cannot fail");
    Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(value: &'static str) -> Accepts {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
        Accepts::of(&headers)
    }

    #[test]
    fn accept_encoding_is_read_with_its_quality_values() {
        assert_eq!(Accepts::of(&HeaderMap::new()), Accepts::IDENTITY);
        assert_eq!(accepts(""), Accepts::IDENTITY);
        let both = |a: Accepts| (a.gzip(), a.identity());
        assert_eq!(both(accepts("gzip, deflate")), (true, true));
        assert_eq!(both(accepts("gzip, deflate, br, zstd")), (true, true));
        assert_eq!(both(accepts("GZip;Q=0.5")), (true, true));
        assert_eq!(both(accepts("x-gzip")), (true, true));
        assert_eq!(both(accepts("deflate, br")), (false, true));
        assert_eq!(both(accepts("gzip;q=0")), (false, true));
        assert_eq!(both(accepts("gzip;q=0.000")), (false, true));
        assert_eq!(both(accepts("gzip, identity;q=0")), (true, false));
        assert_eq!(both(accepts("*")), (true, true));
        assert_eq!(both(accepts("*;q=0")), (false, false));
        assert_eq!(both(accepts("*;q=0, identity")), (false, true));
        assert_eq!(both(accepts("br, *;q=0.1")), (true, true));
        assert_eq!(both(accepts("gzip;q=0, *")), (false, true));
        assert_eq!(
            both(accepts("gzip;q=2")),
            (false, true),
            "q above 1 is invalid"
        );
        assert_eq!(both(accepts("gzip ; q=0.5 , identity;q=0")), (true, false));
        let mut obs_text = HeaderMap::new();
        obs_text.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"gzip, \xe9t\xe9").unwrap(),
        );
        assert!(
            Accepts::of(&obs_text).gzip(),
            "a byte outside ASCII spoils no other item"
        );
        assert_eq!(
            both(accepts("gzip;q=0.1234")),
            (false, true),
            "more than 3 decimals"
        );
    }

    #[test]
    fn the_common_values_read_as_parsing_reads_them() {
        for value in COMMON {
            let mut one = HeaderMap::new();
            one.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_bytes(value).unwrap(),
            );
            // A second, empty field line: the same list (RFC 9110 §5.3), parsed.
            let mut two = one.clone();
            two.append(header::ACCEPT_ENCODING, HeaderValue::from_static(""));
            assert_eq!(Accepts::of(&one), Accepts::of(&two));
            assert_eq!(Accepts::of(&one).preferred(), Coding::Gzip);
        }
    }

    #[test]
    fn the_preferred_coding_follows_the_clients_ratings() {
        assert_eq!(accepts("gzip").preferred(), Coding::Gzip);
        assert_eq!(
            accepts("gzip;q=0.5, identity").preferred(),
            Coding::Identity
        );
        assert_eq!(accepts("gzip, identity;q=0.5").preferred(), Coding::Gzip);
        assert_eq!(accepts("br").preferred(), Coding::Identity);
        assert_eq!(accepts("*;q=0").preferred(), Coding::Identity);
    }

    #[test]
    fn gzip_round_trips_and_decoding_is_bounded() {
        let plain = br#"{"type":"known","accountId":"712020:x"}"#.repeat(50);
        let compressed = gzip(&plain);
        assert!(compressed.len() < plain.len() / 4);
        assert_eq!(gunzip(&compressed, plain.len()).unwrap(), plain);
        assert_eq!(
            gunzip(&compressed, plain.len() - 1),
            Err(DecodeError::TooLarge {
                limit: plain.len() - 1
            })
        );
        // A bomb: 10 MB of zeros in about 10 KB.
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        assert_eq!(
            gunzip(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn corrupt_and_truncated_gzip_is_an_error() {
        let compressed = gzip(&b"{\"watching\":true}".repeat(20));
        assert_eq!(
            gunzip(&compressed[..compressed.len() - 4], 1 << 20),
            Err(DecodeError::Corrupt)
        );
        let mut flipped = compressed.to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        assert!(gunzip(&flipped, 1 << 20).is_err());
        assert_eq!(
            gunzip(b"{\"not\":\"gzip\"}", 1 << 20),
            Err(DecodeError::Corrupt)
        );
    }

    #[test]
    fn content_encoding_names_one_known_coding() {
        let of = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(value));
            Coding::of_response(&headers)
        };
        assert_eq!(Coding::of_response(&HeaderMap::new()), Ok(Coding::Identity));
        assert_eq!(of("gzip"), Ok(Coding::Gzip));
        assert_eq!(of("identity"), Ok(Coding::Identity));
        assert_eq!(of("br"), Err("br".to_owned()));
        assert_eq!(of("gzip, gzip"), Err("gzip, gzip".to_owned()));
    }
}
