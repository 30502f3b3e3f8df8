//! An entry as bytes for the cluster's shared tier, and back: one representation (gzip when
//! held), its lifetime as stored (wall-clock, so another replica ages it right), its headers.
//!
//! Invariant: decoding anything malformed — truncated, another version's magic, a bad
//! status — is `None`, never a panic or a partial entry.

use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use tokio::time::Instant;

use super::vary::Vary;
use super::{Bodies, Entry, Kept, stored_value};
use crate::cache::etag::ETags;
use crate::cache::heads;
use crate::coding::Coding;

impl Entry {
    /// The entry as bytes for the cluster's L2: one representation (gzip when held: fewer
    /// bytes in Redis and on the wire), the variant's request-header fingerprint, and the age
    /// as a wall-clock timestamp.
    pub fn encode(&self) -> Vec<u8> {
        let stored_unix_ms = unix_ms().saturating_sub(self.age(Instant::now()).as_millis() as u64);
        let (coding, body) = match &self.bodies {
            Bodies::Identity(b) => (Coding::Identity, b),
            Bodies::Gzip(b) => (Coding::Gzip, b),
            Bodies::Both(both) => (Coding::Gzip, &both.gzip),
        };
        let mut out = Vec::with_capacity(body.len() + 512);
        out.extend_from_slice(L2_MAGIC);
        out.extend_from_slice(&self.status.as_u16().to_le_bytes());
        for n in [
            stored_unix_ms,
            self.lifetime.0[0],
            self.lifetime.0[1],
            self.lifetime.0[2],
            self.lifetime.0[3],
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.points.to_le_bytes());
        out.push(u8::from(coding == Coding::Gzip));
        let part = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        part(&mut out, &self.etags.digest());
        match &self.vary {
            None => out.extend_from_slice(&0u32.to_le_bytes()),
            Some(vary) => {
                out.extend_from_slice(&(vary.names.len() as u32).to_le_bytes());
                for name in &vary.names {
                    part(&mut out, name.as_str().as_bytes());
                }
                out.extend_from_slice(&vary.fingerprint);
            }
        }
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in self.headers.iter() {
            part(&mut out, name.as_str().as_bytes());
            part(&mut out, value.as_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    /// An entry from the cluster's L2; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut reader = Reader(bytes.strip_prefix(L2_MAGIC)?);
        let status = StatusCode::from_u16(u16::from_le_bytes(reader.array()?)).ok()?;
        let mut numbers = [0u64; 5];
        for n in &mut numbers {
            *n = u64::from_le_bytes(reader.array()?);
        }
        let points = u32::from_le_bytes(reader.array()?);
        let gzip = match reader.take(1)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        let etags = ETags::from_digest(reader.part()?)?;
        let vary_count = u32::from_le_bytes(reader.array()?);
        let vary = if vary_count == 0 {
            None
        } else {
            let names = (0..vary_count)
                .map(|_| HeaderName::from_bytes(reader.part()?).ok())
                .collect::<Option<Vec<_>>>()?;
            Some(Box::new(Vary {
                names,
                fingerprint: reader.array()?,
            }))
        };
        let count = u32::from_le_bytes(reader.array()?);
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = HeaderName::from_bytes(reader.part()?).ok()?;
            let value = HeaderValue::from_bytes(reader.part()?).ok()?;
            headers.push((name, stored_value(&value)));
        }
        let body = Bytes::copy_from_slice(reader.0);
        let [
            stored_unix_ms,
            ttl,
            stale_if_error,
            stale_while_revalidate,
            stale_on_low_quota,
        ] = numbers;
        let age = Duration::from_millis(unix_ms().saturating_sub(stored_unix_ms));
        Some(Entry {
            status,
            headers: heads::intern(headers),
            bodies: if gzip {
                Bodies::Gzip(body)
            } else {
                Bodies::Identity(body)
            },
            etags,
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            lifetime: Kept([
                ttl,
                stale_if_error,
                stale_while_revalidate,
                stale_on_low_quota,
            ]),
            vary,
            points,
            hit_values: ArcSwapOption::empty(),
            refresh: super::Refresh::default(),
        })
    }
}

/// Reads an encoded entry front to back.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A length-prefixed part.
    pub(super) fn part(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

/// Marks (and versions) an encoded L2 entry.
pub(super) const L2_MAGIC: &[u8] = b"WGE4";

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
