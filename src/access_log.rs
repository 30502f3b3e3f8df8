//! The access log: one line per request (target `wikigate::access`, level INFO), formatted
//! here into a buffer each thread reuses and handed to the log's writer ([`log_sink`]).
//!
//! The line has the shape of the other log lines, in either `log.format`: pretty
//! (`TIMESTAMP  INFO wikigate::access: peer=… method=… path="…" request_id="…" [trace_id="…"]
//! caller="…" operation="…" status=… cache="…" [upstream_status=… upstream_us=…] [bytes=…]
//! duration_us=…`) or JSON (one object: `timestamp`, `level`, the fields, `target`). The
//! bracketed fields are there when they say something: a trace id while spans are exported,
//! the request's own upstream exchange (misses, writes, bypasses), the body's length when it
//! is known before it is sent. It is written without `tracing`'s event machinery, whose per-event formatting
//! cost about a third of the hit rate, and without an allocation: the timestamp's date and
//! time are made once a second per thread. The subscriber's filter decides, once, whether it
//! is written, so `log.level` and `RUST_LOG` (`wikigate::access=warn`) turn it off as before;
//! `log.access` picks the requests it is written for (all, all but hits, errors), decided
//! before anything of the line is formatted, and changed by a reload as the level is.
//!
//! Invariant: a line names the caller by label (`caller::CallerId`'s), never by a header;
//! string values are escaped, so a line is always one line and, in JSON, valid JSON.
//!
//! [`log_sink`]: crate::log_sink

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use crate::cache::Outcome;
use crate::caller::CallerId;
use crate::config::{AccessLines, LogFormat};
use crate::routes::Operation;

/// The access log's `tracing` target.
pub(crate) const TARGET: &str = "wikigate::access";

/// How lines look; set once, by [`install`].
#[derive(Debug, Clone, Copy)]
struct Style {
    json: bool,
    colour: bool,
    /// `log.redact_paths`: the route's template instead of the path.
    redact: bool,
}

/// Set once the subscriber is installed (the first call decides, as for the subscriber).
static STYLE: OnceLock<Style> = OnceLock::new();

/// Whether the installed subscriber's filter lets the access log through: decided at install
/// and again whenever a reload changes the filter ([`refresh`]).
static ON: AtomicBool = AtomicBool::new(false);

/// `log.access` (an [`AccessLines`] as its `u8`), set at install and by reloads.
static LINES: AtomicU8 = AtomicU8::new(AccessLines::All as u8);

/// Installs the access log in `format`, on if the installed subscriber's filter enables INFO
/// for [`TARGET`], written for the requests `lines` names.
pub(crate) fn install(format: LogFormat, colour: bool, redact: bool, lines: AccessLines) {
    set_lines(lines);
    let json = matches!(format, LogFormat::Json);
    if STYLE
        .set(Style {
            json,
            colour,
            redact,
        })
        .is_ok()
    {
        refresh();
    }
}

/// Decides again whether the access log is on, after the filter changed (`log.level`).
pub(crate) fn refresh() {
    let on = tracing::enabled!(target: "wikigate::access", tracing::Level::INFO);
    ON.store(on && STYLE.get().is_some(), Ordering::Relaxed);
}

/// Writes lines for the requests `lines` names from now on (`log.access`).
pub(crate) fn set_lines(lines: AccessLines) {
    LINES.store(lines as u8, Ordering::Relaxed);
}

fn lines() -> AccessLines {
    match LINES.load(Ordering::Relaxed) {
        1 => AccessLines::ExceptHits,
        2 => AccessLines::Errors,
        _ => AccessLines::All,
    }
}

/// Whether a line would be written.
pub(crate) fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// What one line says about a finished request.
pub(crate) struct Entry<'a> {
    pub peer: IpAddr,
    pub method: &'a Method,
    /// The path as requested; the line holds the route's template instead under
    /// `log.redact_paths` (`-` when no route matched).
    pub path: &'a str,
    /// The client's `User-Agent`, as sent (at most [`USER_AGENT_MAX`] bytes are logged).
    pub user_agent: Option<&'a [u8]>,
    /// `X-Request-Id` (the client's, or made): ASCII that needs no escaping.
    pub request_id: &'a str,
    /// The exported span's trace id, while spans are exported.
    pub trace_id: Option<&'a [u8; 32]>,
    pub caller: Option<&'a CallerId>,
    pub operation: Option<Operation>,
    pub status: StatusCode,
    pub cache: Option<Outcome>,
    /// The request's own upstream exchange, if it made one: its status and time.
    pub upstream: Option<(u16, Duration)>,
    /// The answer's body length, when known before it is sent (not for streamed answers).
    pub bytes: Option<u64>,
    pub duration: Duration,
}

/// What a request's upstream exchange came to, recorded where the exchange happens (perhaps a
/// task of its own) and read when the line is written. Made only for requests that go
/// upstream.
#[derive(Debug, Default)]
pub(crate) struct UpstreamSeen {
    /// The status of the last answer (0: none yet).
    status: std::sync::atomic::AtomicU16,
    micros: std::sync::atomic::AtomicU64,
}

impl UpstreamSeen {
    /// Records an answer's status and how long it took.
    pub(crate) fn record(&self, status: StatusCode, took: Duration) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.store(micros, Ordering::Relaxed);
    }

    /// The last answer's status and time, if there was one.
    pub(crate) fn seen(&self) -> Option<(u16, Duration)> {
        let status = self.status.load(Ordering::Relaxed);
        (status != 0).then(|| {
            let micros = self.micros.load(Ordering::Relaxed);
            (status, Duration::from_micros(micros))
        })
    }
}

/// A thread's reused buffer and its timestamp's date and time for the current second.
struct Scratch {
    line: Vec<u8>,
    second: u64,
    second_text: [u8; 19],
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { line: Vec::new(), second: u64::MAX, second_text: [0; 19] })
    };
}

/// Writes `entry`'s line, if the access log is installed and `log.access` wants it.
pub(crate) fn write(entry: &Entry<'_>) {
    let Some(style) = STYLE.get().filter(|_| enabled()) else {
        return;
    };
    if !wanted(lines(), entry) {
        return;
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.line.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != scratch.second {
            scratch.second = now.as_secs();
            scratch.second_text = crate::rfc3339::second(scratch.second);
        }
        let timestamp = Timestamp {
            second: &scratch.second_text,
            micros: now.subsec_micros(),
        };
        let line = &mut scratch.line;
        let redacted;
        let entry = match style.redact {
            false => entry,
            true => {
                let template = entry.operation.map_or("-", |o| o.route().template());
                redacted = Entry {
                    path: template,
                    ..*entry
                };
                &redacted
            }
        };
        if style.json {
            json(line, &timestamp, entry);
        } else {
            pretty(line, &timestamp, entry, style.colour);
        }
        crate::log_sink::stderr().write_line(line);
        // A line made long by an odd path does not keep its buffer alive.
        line.shrink_to(4096);
    });
}

/// Whether `lines` has a line written for `entry`.
fn wanted(lines: AccessLines, entry: &Entry<'_>) -> bool {
    match lines {
        AccessLines::All => true,
        AccessLines::ExceptHits => !matches!(
            entry.cache,
            Some(Outcome::Hit(_) | Outcome::StaleWhileRevalidate)
        ),
        AccessLines::Errors => entry.status.as_u16() >= 400,
    }
}

struct Timestamp<'a> {
    second: &'a [u8; 19],
    micros: u32,
}

impl Timestamp<'_> {
    fn write(&self, line: &mut Vec<u8>) {
        line.extend_from_slice(self.second);
        let mut fraction = *b".000000Z";
        let mut micros = self.micros;
        for digit in fraction[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        line.extend_from_slice(&fraction);
    }
}

/// `2026-11-30T06:20:34.123456Z  INFO wikigate::access: peer=… method=GET path="…" …`
fn pretty(line: &mut Vec<u8>, timestamp: &Timestamp<'_>, entry: &Entry<'_>, colour: bool) {
    let (dim, green, reset): (&[u8], &[u8], &[u8]) = if colour {
        (b"\x1b[2m", b"\x1b[32m", b"\x1b[0m")
    } else {
        (b"", b"", b"")
    };
    line.extend_from_slice(dim);
    timestamp.write(line);
    for part in [reset, b" ", green, b" INFO", reset, b" ", dim] {
        line.extend_from_slice(part);
    }
    line.extend_from_slice(TARGET.as_bytes());
    line.push(b':');
    line.extend_from_slice(reset);
    fields::<PrettyKeys>(line, entry);
    line.push(b'\n');
}

/// `{"timestamp":"…","level":"INFO","peer":"…",…,"target":"wikigate::access"}`, the order
/// `tracing`'s JSON lines have.
fn json(line: &mut Vec<u8>, timestamp: &Timestamp<'_>, entry: &Entry<'_>) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    timestamp.write(line);
    line.extend_from_slice(b"\",\"level\":\"INFO\"");
    fields::<JsonKeys>(line, entry);
    line.extend_from_slice(b",\"target\":\"");
    line.extend_from_slice(TARGET.as_bytes());
    line.extend_from_slice(b"\"}\n");
}

/// What comes before each field in one format's line, and what surrounds the two strings
/// that never need escaping (`peer` and `method`: nothing in a pretty line, `"` in JSON).
/// Constants, so that writing them copies a known number of bytes.
trait Keys {
    const PEER: &'static [u8];
    const METHOD: &'static [u8];
    const PATH: &'static [u8];
    const REQUEST_ID: &'static [u8];
    const TRACE_ID: &'static [u8];
    const CALLER: &'static [u8];
    const USER_AGENT: &'static [u8];
    const OPERATION: &'static [u8];
    const STATUS: &'static [u8];
    const CACHE: &'static [u8];
    const UPSTREAM_STATUS: &'static [u8];
    const UPSTREAM_US: &'static [u8];
    const BYTES: &'static [u8];
    const DURATION: &'static [u8];
    const BARE_QUOTE: &'static [u8];
}

struct PrettyKeys;
struct JsonKeys;

impl Keys for PrettyKeys {
    const PEER: &'static [u8] = b" peer=";
    const METHOD: &'static [u8] = b" method=";
    const PATH: &'static [u8] = b" path=";
    const REQUEST_ID: &'static [u8] = b" request_id=";
    const TRACE_ID: &'static [u8] = b" trace_id=";
    const CALLER: &'static [u8] = b" caller=";
    const USER_AGENT: &'static [u8] = b" user_agent=";
    const OPERATION: &'static [u8] = b" operation=";
    const STATUS: &'static [u8] = b" status=";
    const CACHE: &'static [u8] = b" cache=";
    const UPSTREAM_STATUS: &'static [u8] = b" upstream_status=";
    const UPSTREAM_US: &'static [u8] = b" upstream_us=";
    const BYTES: &'static [u8] = b" bytes=";
    const DURATION: &'static [u8] = b" duration_us=";
    const BARE_QUOTE: &'static [u8] = b"";
}

impl Keys for JsonKeys {
    const PEER: &'static [u8] = b",\"peer\":";
    const METHOD: &'static [u8] = b",\"method\":";
    const PATH: &'static [u8] = b",\"path\":";
    const REQUEST_ID: &'static [u8] = b",\"request_id\":";
    const TRACE_ID: &'static [u8] = b",\"trace_id\":";
    const CALLER: &'static [u8] = b",\"caller\":";
    const USER_AGENT: &'static [u8] = b",\"user_agent\":";
    const OPERATION: &'static [u8] = b",\"operation\":";
    const STATUS: &'static [u8] = b",\"status\":";
    const CACHE: &'static [u8] = b",\"cache\":";
    const UPSTREAM_STATUS: &'static [u8] = b",\"upstream_status\":";
    const UPSTREAM_US: &'static [u8] = b",\"upstream_us\":";
    const BYTES: &'static [u8] = b",\"bytes\":";
    const DURATION: &'static [u8] = b",\"duration_us\":";
    const BARE_QUOTE: &'static [u8] = b"\"";
}

/// The fields, in order, each after its key.
fn fields<K: Keys>(line: &mut Vec<u8>, entry: &Entry<'_>) {
    line.extend_from_slice(K::PEER);
    line.extend_from_slice(K::BARE_QUOTE);
    address(line, entry.peer);
    line.extend_from_slice(K::BARE_QUOTE);
    line.extend_from_slice(K::METHOD);
    line.extend_from_slice(K::BARE_QUOTE);
    line.extend_from_slice(entry.method.as_str().as_bytes());
    line.extend_from_slice(K::BARE_QUOTE);
    line.extend_from_slice(K::PATH);
    quoted(line, entry.path);
    // The id is ASCII that needs no escaping (`request_id`); quoted in both formats.
    line.extend_from_slice(K::REQUEST_ID);
    line.push(b'"');
    line.extend_from_slice(entry.request_id.as_bytes());
    line.push(b'"');
    if let Some(trace_id) = entry.trace_id {
        line.extend_from_slice(K::TRACE_ID);
        line.push(b'"');
        line.extend_from_slice(trace_id);
        line.push(b'"');
    }
    line.extend_from_slice(K::CALLER);
    caller(line, entry.caller);
    line.extend_from_slice(K::USER_AGENT);
    user_agent(line, entry.user_agent);
    line.extend_from_slice(K::OPERATION);
    quoted(line, entry.operation.map_or("-", Operation::id));
    line.extend_from_slice(K::STATUS);
    decimal(line, u64::from(entry.status.as_u16()));
    line.extend_from_slice(K::CACHE);
    outcome(line, entry.cache);
    if let Some((status, took)) = entry.upstream {
        line.extend_from_slice(K::UPSTREAM_STATUS);
        decimal(line, u64::from(status));
        line.extend_from_slice(K::UPSTREAM_US);
        decimal(line, took.as_micros() as u64);
    }
    if let Some(bytes) = entry.bytes {
        line.extend_from_slice(K::BYTES);
        decimal(line, bytes);
    }
    line.extend_from_slice(K::DURATION);
    decimal(line, entry.duration.as_micros() as u64);
}

/// A caller's label, quoted (`CallerId`'s `Display`, written without `core::fmt`).
fn caller(line: &mut Vec<u8>, caller: Option<&CallerId>) {
    match caller {
        None => quoted(line, "-"),
        Some(CallerId::Client(name)) => quoted(line, name),
        Some(CallerId::Credential(hash)) => {
            line.extend_from_slice(b"\"credential:");
            for byte in &hash[..4] {
                line.push(HEX[usize::from(byte >> 4)]);
                line.push(HEX[usize::from(byte & 0xf)]);
            }
            line.push(b'"');
        }
        Some(CallerId::Address(ip)) => {
            line.push(b'"');
            address(line, *ip);
            line.push(b'"');
        }
    }
}

/// The most of a `User-Agent` a line holds: clients' are 20–150 bytes; the rest of a longer
/// one says nothing an operator needs, and would let a client make lines of any length.
pub(crate) const USER_AGENT_MAX: usize = 256;

/// The client's `User-Agent`, quoted and escaped, cut at [`USER_AGENT_MAX`] bytes; `-` when it
/// sent none. Bytes that are not UTF-8 (HTTP allows them) become U+FFFD.
fn user_agent(line: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(value) = value else {
        return quoted(line, "-");
    };
    let value = &value[..value.len().min(USER_AGENT_MAX)];
    quoted(line, &String::from_utf8_lossy(value));
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What the cache did, quoted (its text never needs escaping; the usual outcomes' texts are
/// static, so writing them formats nothing).
fn outcome(line: &mut Vec<u8>, outcome: Option<Outcome>) {
    line.push(b'"');
    match outcome {
        Some(outcome) => line.extend_from_slice(outcome.cache_status().as_bytes()),
        None => line.push(b'-'),
    }
    line.push(b'"');
}

/// An address as `Display` writes it; IPv4 (the common case) without `core::fmt`.
fn address(line: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a buffer on the stack, then one copy: the address is in every line.
            let (mut text, mut len) = ([0u8; 15], 0);
            for (n, octet) in v4.octets().into_iter().enumerate() {
                if n > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            line.extend_from_slice(&text[..len]);
        }
        IpAddr::V6(v6) => {
            let _ = std::io::Write::write_fmt(line, format_args!("{v6}"));
        }
    }
}

/// `value` in decimal (itoa: no `core::fmt`).
fn decimal(line: &mut Vec<u8>, value: u64) {
    line.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `value` in double quotes, escaped as JSON escapes a string (which a pretty line's reader
/// can read too): `"` and `\` backslashed, control characters as `\u00XX`.
fn quoted(line: &mut Vec<u8>, value: &str) {
    line.push(b'"');
    let bytes = value.as_bytes();
    // Nearly every value is clean: copied whole.
    if !needs_escaping(bytes) {
        line.extend_from_slice(bytes);
    } else {
        for &byte in bytes {
            match byte {
                b'"' | b'\\' => line.extend_from_slice(&[b'\\', byte]),
                _ if ESCAPED[usize::from(byte)] => line.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]),
                _ => line.push(byte),
            }
        }
    }
    line.push(b'"');
}

/// Whether any of `bytes` is one a quoted value escapes: a table lookup a byte (why not eight
/// at a time: benches/README.md, "Decisions measured").
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.iter().any(|&byte| ESCAPED[usize::from(byte)])
}

/// The bytes a quoted value escapes: control characters, DEL, `"` and `\\`.
const ESCAPED: [bool; 256] = {
    let mut escaped = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        escaped[byte] =
            byte < 0x20 || byte == 0x7f || byte == b'"' as usize || byte == b'\\' as usize;
        byte += 1;
    }
    escaped
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Tier;

    fn entry<'a>(caller: &'a CallerId, path: &'a str) -> Entry<'a> {
        Entry {
            peer: IpAddr::from([127, 0, 0, 1]),
            method: &Method::GET,
            path,
            user_agent: Some(b"python-requests/2.32.3"),
            request_id: "0a1b2c3d0000000000000007",
            trace_id: None,
            caller: Some(caller),
            operation: Some(Operation::ALL[0]),
            status: StatusCode::OK,
            cache: Some(Outcome::Hit(Tier::Memory)),
            upstream: None,
            bytes: Some(1220),
            duration: Duration::from_micros(57),
        }
    }

    const STAMP: Timestamp<'static> = Timestamp {
        second: b"2026-11-30T06:20:34",
        micros: 1234,
    };

    #[test]
    fn pretty_lines_read_as_tracing_writes_them() {
        let caller = CallerId::Client("reporting".into());
        let mut line = Vec::new();
        pretty(
            &mut line,
            &STAMP,
            &entry(&caller, "/wiki/rest/api/user"),
            false,
        );
        assert_eq!(
            String::from_utf8(line).unwrap(),
            format!(
                "2026-11-30T06:20:34.001234Z  INFO wikigate::access: peer=127.0.0.1 method=GET \
                 path=\"/wiki/rest/api/user\" request_id=\"0a1b2c3d0000000000000007\" \
                 caller=\"reporting\" user_agent=\"python-requests/2.32.3\" operation=\"{}\" \
                 status=200 cache=\"wikigate; hit\" \
                 bytes=1220 duration_us=57\n",
                Operation::ALL[0].id()
            )
        );
    }

    #[test]
    fn log_access_keeps_the_lines_it_names() {
        use crate::cache::{Forward, Stored};
        let caller = CallerId::Client("reporting".into());
        let answer = |cache: Option<Outcome>, status: u16| Entry {
            cache,
            status: StatusCode::from_u16(status).unwrap(),
            ..entry(&caller, "/")
        };
        // A miss that waited for another request's upstream answer.
        let coalesced = Outcome::Forwarded {
            why: Forward::Miss,
            collapsed: true,
            stored: Stored::Yes,
        };
        // (the answer, wanted by except-hits, wanted by errors)
        let cases = [
            (answer(Some(Outcome::Hit(Tier::Memory)), 200), false, false),
            (answer(Some(Outcome::Hit(Tier::Cluster)), 200), false, false),
            (
                answer(Some(Outcome::StaleWhileRevalidate), 200),
                false,
                false,
            ),
            // A stored 404 is a hit, and an error.
            (answer(Some(Outcome::Hit(Tier::Memory)), 404), false, true),
            (answer(Some(coalesced), 200), true, false),
            (answer(Some(Outcome::StaleOnLowQuota), 200), true, false),
            (answer(Some(Outcome::StaleIfError(None)), 200), true, false),
            (
                answer(Some(Outcome::Partial { fetched: 1, of: 3 }), 200),
                true,
                false,
            ),
            // Writes, refusals and errors wikigate makes carry no cache outcome.
            (answer(None, 204), true, false),
            (answer(None, 429), true, true),
            (answer(None, 502), true, true),
        ];
        // Through the process's setting and back to the default.
        for each in [
            AccessLines::ExceptHits,
            AccessLines::Errors,
            AccessLines::All,
        ] {
            set_lines(each);
            assert_eq!(lines(), each);
        }
        for (entry, except_hits, errors) in &cases {
            let what = (entry.cache, entry.status);
            assert!(wanted(AccessLines::All, entry), "{what:?}");
            assert_eq!(
                wanted(AccessLines::ExceptHits, entry),
                *except_hits,
                "{what:?}"
            );
            assert_eq!(wanted(AccessLines::Errors, entry), *errors, "{what:?}");
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_wherever_it_is() {
        // Clean backgrounds next to the edges of the ranges found.
        for background in [b'a', 0x20, 0x21, 0x7e, 0x80, 0xff] {
            for byte in 0..=255u8 {
                for len in 1..20 {
                    for at in 0..len {
                        let mut bytes = vec![background; len];
                        bytes[at] = byte;
                        assert_eq!(
                            needs_escaping(&bytes),
                            ESCAPED[usize::from(byte)],
                            "{byte:#x} at {at} of {len} in {background:#x}"
                        );
                    }
                }
            }
        }
        assert!(!needs_escaping(b""));
        assert!(!needs_escaping("/wiki/rest/api/user/ünïcode".as_bytes()));
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.3.100",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut line = Vec::new();
            address(&mut line, ip);
            assert_eq!(String::from_utf8(line).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn json_lines_are_json_whatever_the_values() {
        let caller = CallerId::Client("a \"quoted\"\\\nname\u{7}".into());
        let mut line = Vec::new();
        let mut odd = entry(&caller, "/wiki/\"x\"");
        odd.operation = None;
        odd.cache = None;
        let trace = *b"4bf92f3577b34da6a3ce929d0e0e4736";
        odd.trace_id = Some(&trace);
        odd.upstream = Some((429, Duration::from_micros(1500)));
        json(&mut line, &STAMP, &odd);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["timestamp"], "2026-11-30T06:20:34.001234Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], TARGET);
        assert_eq!(value["caller"], "a \"quoted\"\\\nname\u{7}");
        assert_eq!(value["path"], "/wiki/\"x\"");
        assert_eq!(value["operation"], "-");
        assert_eq!(value["cache"], "-");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_us"], 57);
        assert_eq!(value["request_id"], "0a1b2c3d0000000000000007");
        assert_eq!(value["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            (
                value["upstream_status"].as_u64(),
                value["upstream_us"].as_u64()
            ),
            (Some(429), Some(1500))
        );
        assert_eq!(value["bytes"], 1220);
        assert_eq!(value["user_agent"], "python-requests/2.32.3");
        // A client's User-Agent, however odd or long, is one bounded, escaped JSON string.
        let mut agent = b"evil\" \n\xff\x01".to_vec();
        agent.resize(10_000, b'x');
        odd.user_agent = Some(&agent);
        let mut line = Vec::new();
        json(&mut line, &STAMP, &odd);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let logged = value["user_agent"].as_str().unwrap();
        assert!(logged.starts_with("evil\" \n\u{fffd}\u{1}"), "{logged}");
        assert!(logged.len() <= USER_AGENT_MAX + 2);
        odd.user_agent = None;
        let mut line = Vec::new();
        json(&mut line, &STAMP, &odd);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["user_agent"], "-");
        let mut line = Vec::new();
        pretty(&mut line, &STAMP, &odd, false);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn callers_addresses_and_numbers_read_as_their_display() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let callers = [
            CallerId::Credential([0xab, 0x01, 0xff, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            CallerId::Address(IpAddr::from([10, 0, 200, 7])),
            CallerId::Address(v6),
        ];
        for id in &callers {
            let mut line = Vec::new();
            caller(&mut line, Some(id));
            assert_eq!(String::from_utf8(line).unwrap(), format!("\"{id}\""));
        }
        for n in [0, 7, 10, 99, 65_535, u64::MAX] {
            let mut line = Vec::new();
            decimal(&mut line, n);
            assert_eq!(String::from_utf8(line).unwrap(), n.to_string());
        }
        let mut line = Vec::new();
        pretty(&mut line, &STAMP, &entry(&callers[0], "/"), true);
        let line = String::from_utf8(line).unwrap();
        assert!(line.contains("\x1b[32m INFO\x1b[0m"), "{line:?}");
        assert!(line.contains("caller=\"credential:ab01ff10\""), "{line:?}");
    }
}
