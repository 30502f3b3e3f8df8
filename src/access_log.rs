//! The access log: one line per request (target `wikigate::access`, level INFO), formatted
//! here into a buffer each thread reuses and handed to the log's writer ([`log_sink`]).
//!
//! The line has the shape of the other log lines, in either `log.format`: pretty
//! (`TIMESTAMP  INFO wikigate::access: peer=… method=… path="…" caller="…" operation="…"
//! status=… cache="…" duration_us=…`) or JSON (one object: `timestamp`, `level`, the fields,
//! `target`). It is written without `tracing`'s event machinery, whose per-event formatting
//! cost about a third of the hit rate, and without an allocation: the timestamp's date and
//! time are made once a second per thread. The subscriber's filter decides, once, whether it
//! is written, so `log.level` and `RUST_LOG` (`wikigate::access=warn`) turn it off as before.
//!
//! Invariant: a line names the caller by label (`caller::CallerId`'s), never by a header;
//! string values are escaped, so a line is always one line and, in JSON, valid JSON.
//!
//! [`log_sink`]: crate::log_sink

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use crate::cache::Outcome;
use crate::caller::CallerId;
use crate::config::LogFormat;
use crate::routes::Operation;

/// The access log's `tracing` target.
pub const TARGET: &str = "wikigate::access";

/// How lines look; set once, by [`install`].
#[derive(Debug, Clone, Copy)]
struct Style {
    json: bool,
    colour: bool,
}

/// Set once the subscriber is installed, if its filter lets the access log through.
static STYLE: OnceLock<Style> = OnceLock::new();

/// Turns the access log on, in `format`, if the installed subscriber's filter enables INFO
/// for [`TARGET`] (the first call decides, as for the subscriber; the filter does not change
/// while the process runs).
pub fn install(format: LogFormat, colour: bool) {
    if tracing::enabled!(target: "wikigate::access", tracing::Level::INFO) {
        let json = matches!(format, LogFormat::Json);
        let _ = STYLE.set(Style { json, colour });
    }
}

/// Whether a line would be written.
pub fn enabled() -> bool {
    STYLE.get().is_some()
}

/// What one line says about a finished request.
pub struct Entry<'a> {
    pub peer: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub caller: Option<&'a CallerId>,
    pub operation: Option<Operation>,
    pub status: StatusCode,
    pub cache: Option<Outcome>,
    pub duration: Duration,
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

/// Writes `entry`'s line, if the access log is installed.
pub fn write(entry: &Entry<'_>) {
    let Some(style) = STYLE.get() else { return };
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
    fields(line, entry, &PRETTY_KEYS, b"");
    line.push(b'\n');
}

/// `{"timestamp":"…","level":"INFO","peer":"…",…,"target":"wikigate::access"}`, the order
/// `tracing`'s JSON lines have.
fn json(line: &mut Vec<u8>, timestamp: &Timestamp<'_>, entry: &Entry<'_>) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    timestamp.write(line);
    line.extend_from_slice(b"\",\"level\":\"INFO\"");
    fields(line, entry, &JSON_KEYS, b"\"");
    line.extend_from_slice(b",\"target\":\"");
    line.extend_from_slice(TARGET.as_bytes());
    line.extend_from_slice(b"\"}\n");
}

/// What comes before each field in a pretty line, and in a JSON one.
const PRETTY_KEYS: [&[u8]; 8] = [
    b" peer=",
    b" method=",
    b" path=",
    b" caller=",
    b" operation=",
    b" status=",
    b" cache=",
    b" duration_us=",
];
const JSON_KEYS: [&[u8]; 8] = [
    b",\"peer\":",
    b",\"method\":",
    b",\"path\":",
    b",\"caller\":",
    b",\"operation\":",
    b",\"status\":",
    b",\"cache\":",
    b",\"duration_us\":",
];

/// The fields, in order, each after its key; `peer` and `method` (which never need escaping)
/// between `bare_quote`s: nothing in a pretty line, `"` in JSON.
fn fields(line: &mut Vec<u8>, entry: &Entry<'_>, keys: &[&[u8]; 8], bare_quote: &[u8]) {
    let [
        peer,
        method,
        path,
        caller_key,
        operation,
        status,
        cache,
        duration,
    ] = keys;
    line.extend_from_slice(peer);
    line.extend_from_slice(bare_quote);
    address(line, entry.peer);
    line.extend_from_slice(bare_quote);
    line.extend_from_slice(method);
    line.extend_from_slice(bare_quote);
    line.extend_from_slice(entry.method.as_str().as_bytes());
    line.extend_from_slice(bare_quote);
    line.extend_from_slice(path);
    quoted(line, entry.path);
    line.extend_from_slice(caller_key);
    caller(line, entry.caller);
    line.extend_from_slice(operation);
    quoted(line, entry.operation.map_or("-", Operation::id));
    line.extend_from_slice(status);
    decimal(line, u64::from(entry.status.as_u16()));
    line.extend_from_slice(cache);
    outcome(line, entry.cache);
    line.extend_from_slice(duration);
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

fn decimal(line: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[at..]);
}

/// `value` in double quotes, escaped as JSON escapes a string (which a pretty line's reader
/// can read too): `"` and `\` backslashed, control characters as `\u00XX`.
fn quoted(line: &mut Vec<u8>, value: &str) {
    line.push(b'"');
    let bytes = value.as_bytes();
    // Nearly every value is clean: one pass without branches (vectorised) says so.
    let dirty = bytes
        .iter()
        .fold(false, |dirty, &byte| dirty | needs_escape(byte));
    if !dirty {
        line.extend_from_slice(bytes);
    } else {
        for &byte in bytes {
            match byte {
                b'"' | b'\\' => line.extend_from_slice(&[b'\\', byte]),
                _ if needs_escape(byte) => line.extend_from_slice(&[
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

fn needs_escape(byte: u8) -> bool {
    (byte < 0x20) | (byte == b'"') | (byte == b'\\') | (byte == 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Tier;

    fn entry<'a>(caller: &'a CallerId, path: &'a str) -> Entry<'a> {
        Entry {
            peer: IpAddr::from([127, 0, 0, 1]),
            method: &Method::GET,
            path,
            caller: Some(caller),
            operation: Some(Operation::ALL[0]),
            status: StatusCode::OK,
            cache: Some(Outcome::Hit(Tier::Memory)),
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
                 path=\"/wiki/rest/api/user\" caller=\"reporting\" operation=\"{}\" status=200 \
                 cache=\"wikigate; hit\" duration_us=57\n",
                Operation::ALL[0].id()
            )
        );
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
