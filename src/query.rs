//! The one query parser: `application/x-www-form-urlencoded` pairs, decoded to bytes.
//!
//! A `+` is a space and `%XX` is the byte `XX`, as Confluence reads a query; so `a+b` and
//! `a%2Bb` are different values, and `a+b` and `a%20b` the same. Values are bytes, not text:
//! `%FF` and `%FE` stay apart, where a lossy UTF-8 decode (as `form_urlencoded`'s) would turn
//! both into U+FFFD and let two different queries share a cache key.
//!
//! Invariant: decoding borrows when there is nothing to decode, and never fails: a `%` not
//! followed by two hex digits is kept as it is, as upstream keeps it.

use std::borrow::Cow;

/// A decoded `name=value` pair, borrowing from the query where nothing needed decoding.
pub(crate) type Pair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The query's `name=value` pairs in order, decoded; empty pairs skipped.
pub(crate) fn pairs(query: &str) -> impl Iterator<Item = Pair<'_>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(name), decode(value))
    })
}

/// One query component, decoded.
pub(crate) fn decode(component: &str) -> Cow<'_, [u8]> {
    let bytes = component.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'+' | b'%')) {
        return Cow::Borrowed(bytes);
    }
    let spaced: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    Cow::Owned(percent_encoding::percent_decode(&spaced).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs(query)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn plus_is_a_space_and_escapes_are_bytes() {
        assert_eq!(decoded("a=x+y"), decoded("a=x%20y"));
        assert_ne!(decoded("a=x+y"), decoded("a=x%2By"));
        assert_eq!(decoded("a=x%2By")[0].1, b"x+y");
        assert_ne!(decoded("a=%FF"), decoded("a=%FE"));
        assert_eq!(decoded("a=%FF")[0].1, [0xff]);
        assert_eq!(decoded("a=100%")[0].1, b"100%", "a bare % is kept");
        assert_eq!(
            decoded("&&b&c=")[..],
            [(b"b".to_vec(), vec![]), (b"c".to_vec(), vec![])]
        );
    }

    #[test]
    fn nothing_to_decode_borrows() {
        assert!(matches!(decode("accountId"), Cow::Borrowed(_)));
        assert!(matches!(decode("a%41"), Cow::Owned(_)));
    }
}
