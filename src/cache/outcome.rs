//! What the cache did for one request, said once: the `Cache-Status` header (RFC 9211), the
//! access log's `cache` field and the metrics' `cache` label are all made from an [`Outcome`]
//! (as pingora's `CachePhase` and Souin's cache status are).
//!
//! Invariant: every answer to a cacheable read carries the `Cache-Status` of its outcome, and
//! its metric label and log field say the same thing.

use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::key::Bypass;
use crate::body::Body;
use crate::metrics::CacheLabel;

/// RFC 9211's header, whose values [`Outcome::cache_status`] makes.
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from a fresh entry.
    Hit(Tier),
    /// An expired entry answered at once while one request refreshes it.
    StaleWhileRevalidate,
    /// An expired entry answered instead of spending the site's low quota.
    StaleOnLowQuota,
    /// An expired entry answered because upstream failed — with this status, or without one
    /// (unreachable, timed out, or not asked at all: a hold or a limit refused the call).
    StaleIfError(Option<StatusCode>),
    /// Went upstream, or joined a request that did.
    Forwarded {
        why: Forward,
        /// It waited for an identical request's answer instead of asking itself.
        collapsed: bool,
        stored: Stored,
    },
    /// A bulk lookup: `fetched` of its `of` accounts asked of upstream, the rest from the
    /// cache (all stored).
    Partial { fetched: usize, of: usize },
    /// Not cached at all.
    Bypass(Bypass),
}

/// Which cache a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This replica's memory.
    Memory,
    /// The cluster's shared tier (Redis).
    Cluster,
}

/// Why a request went upstream (RFC 9211's `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing usable was stored.
    Miss,
    /// The request's own `Cache-Control` (`no-cache`, `no-store`) sent it.
    Request,
    /// An expired entry was kept to fall back on while fetching anew.
    Stale,
}

/// What became of a forwarded answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Not storable: an error status, `Set-Cookie`, `no-store` asked by the client.
    No,
    /// Too large to hold: streamed through.
    TooLarge,
}

impl Outcome {
    /// A miss that was stored: the most common forwarded outcome.
    pub const STORED: Outcome = Outcome::Forwarded {
        why: Forward::Miss,
        collapsed: false,
        stored: Stored::Yes,
    };

    /// The `Cache-Status` value.
    pub fn cache_status(&self) -> HeaderValue {
        match self {
            Outcome::Hit(Tier::Memory) => HeaderValue::from_static("wikigate; hit"),
            Outcome::Hit(Tier::Cluster) => HeaderValue::from_static("wikigate; hit; detail=l2"),
            Outcome::StaleWhileRevalidate => {
                HeaderValue::from_static("wikigate; hit; detail=stale-while-revalidate")
            }
            Outcome::StaleOnLowQuota => {
                HeaderValue::from_static("wikigate; fwd=stale; detail=quota")
            }
            Outcome::StaleIfError(None) => {
                HeaderValue::from_static("wikigate; fwd=stale; detail=stale-if-error")
            }
            Outcome::Forwarded {
                why: Forward::Miss,
                collapsed: false,
                stored: Stored::Yes,
            } => HeaderValue::from_static("wikigate; fwd=miss; stored"),
            Outcome::Forwarded {
                why: Forward::Miss,
                collapsed: false,
                stored: Stored::No,
            } => HeaderValue::from_static("wikigate; fwd=miss"),
            other => HeaderValue::from_str(&other.to_string())
                .expect("a Cache-Status is made of ASCII words"),
        }
    }

    /// The metric `cache` label.
    pub fn label(&self) -> CacheLabel {
        match self {
            Outcome::Hit(_) => CacheLabel::Hit,
            Outcome::StaleWhileRevalidate => CacheLabel::StaleWhileRevalidate,
            Outcome::StaleIfError(_) => CacheLabel::StaleIfError,
            Outcome::StaleOnLowQuota => CacheLabel::StaleOnLowQuota,
            Outcome::Forwarded {
                collapsed: true, ..
            } => CacheLabel::Coalesced,
            Outcome::Forwarded {
                why: Forward::Request,
                ..
            } => CacheLabel::Request,
            Outcome::Forwarded { .. } | Outcome::Partial { .. } => CacheLabel::Miss,
            Outcome::Bypass(_) => CacheLabel::Bypass,
        }
    }
}

/// The `Cache-Status` text, also the access log's `cache` field.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wikigate; ")?;
        match self {
            Outcome::Hit(Tier::Memory) => f.write_str("hit"),
            Outcome::Hit(Tier::Cluster) => f.write_str("hit; detail=l2"),
            Outcome::StaleWhileRevalidate => f.write_str("hit; detail=stale-while-revalidate"),
            Outcome::StaleOnLowQuota => f.write_str("fwd=stale; detail=quota"),
            Outcome::StaleIfError(None) => f.write_str("fwd=stale; detail=stale-if-error"),
            Outcome::StaleIfError(Some(status)) => write!(
                f,
                "fwd=stale; fwd-status={}; detail=stale-if-error",
                status.as_u16()
            ),
            Outcome::Forwarded {
                why,
                collapsed,
                stored,
            } => {
                f.write_str(match why {
                    Forward::Miss => "fwd=miss",
                    Forward::Request => "fwd=request",
                    Forward::Stale => "fwd=stale",
                })?;
                if *collapsed {
                    f.write_str("; collapsed")?;
                }
                f.write_str(match stored {
                    Stored::Yes => "; stored",
                    Stored::No => "",
                    Stored::TooLarge => "; detail=too-large",
                })
            }
            Outcome::Partial { fetched, of } => {
                write!(f, "fwd=partial; stored; detail=fetched-{fetched}-of-{of}")
            }
            Outcome::Bypass(why) => write!(f, "fwd=bypass; detail={}", why.as_str()),
        }
    }
}

/// What the cache did for a response, and the Atlassian quota points it saved when it needed
/// no upstream call of its own; beside the response, for the metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub outcome: Outcome,
    pub saved_points: Option<u32>,
}

/// Sets the `Cache-Status` of `outcome` on a response the cache did not build.
pub(crate) fn mark(response: &mut Response<Body>, outcome: &Outcome) {
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), outcome.cache_status());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_the_log_and_the_label_say_the_same_thing() {
        let cases = [
            (Outcome::Hit(Tier::Memory), "wikigate; hit", CacheLabel::Hit),
            (
                Outcome::Hit(Tier::Cluster),
                "wikigate; hit; detail=l2",
                CacheLabel::Hit,
            ),
            (
                Outcome::StaleWhileRevalidate,
                "wikigate; hit; detail=stale-while-revalidate",
                CacheLabel::StaleWhileRevalidate,
            ),
            (
                Outcome::StaleIfError(Some(StatusCode::SERVICE_UNAVAILABLE)),
                "wikigate; fwd=stale; fwd-status=503; detail=stale-if-error",
                CacheLabel::StaleIfError,
            ),
            (
                Outcome::StaleIfError(None),
                "wikigate; fwd=stale; detail=stale-if-error",
                CacheLabel::StaleIfError,
            ),
            (
                Outcome::StaleOnLowQuota,
                "wikigate; fwd=stale; detail=quota",
                CacheLabel::StaleOnLowQuota,
            ),
            (
                Outcome::STORED,
                "wikigate; fwd=miss; stored",
                CacheLabel::Miss,
            ),
            (
                Outcome::Forwarded {
                    why: Forward::Miss,
                    collapsed: true,
                    stored: Stored::Yes,
                },
                "wikigate; fwd=miss; collapsed; stored",
                CacheLabel::Coalesced,
            ),
            (
                Outcome::Forwarded {
                    why: Forward::Request,
                    collapsed: false,
                    stored: Stored::No,
                },
                "wikigate; fwd=request",
                CacheLabel::Request,
            ),
            (
                Outcome::Forwarded {
                    why: Forward::Stale,
                    collapsed: false,
                    stored: Stored::TooLarge,
                },
                "wikigate; fwd=stale; detail=too-large",
                CacheLabel::Miss,
            ),
            (
                Outcome::Partial { fetched: 3, of: 20 },
                "wikigate; fwd=partial; stored; detail=fetched-3-of-20",
                CacheLabel::Miss,
            ),
            (
                Outcome::Bypass(Bypass::Jwt),
                "wikigate; fwd=bypass; detail=jwt",
                CacheLabel::Bypass,
            ),
        ];
        for (outcome, text, label) in cases {
            assert_eq!(outcome.to_string(), text);
            assert_eq!(outcome.cache_status(), text);
            assert_eq!(outcome.label(), label, "{text}");
        }
    }
}
