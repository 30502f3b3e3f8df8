//! The access log: one line per request (target `wikigate::access`, level INFO), formatted
//! here into a buffer each thread reuses and handed to the log's writer ([`log_sink`]).
//!
//! The line has the shape of the other log lines, in either `log.format`: pretty
//! (`TIMESTAMP  INFO wikigate::access: peer=… method=… path="…" caller="…" operation="…"
//! status=… cache="…" duration_us=…`) or JSON (one object: `timestamp`, `level`, the fields,
//! `target`). It is written without `tracing`'s event machinery, whose per-event formatting
//! cost about a third of the hit rate, and without an allocation: the timestamp's date and
//! time are made once a second per thread. `tracing` still decides whether it is written, so
//! `log.level` and `RUST_LOG` (`wikigate::access=warn`) turn it off as before.
//!
//! Invariant: a line names the caller by label (`caller::CallerId`'s), never by a header;
//! string values are escaped, so a line is always one line and, in JSON, valid JSON.
//!
//! [`log_sink`]: crate::log_sink

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
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

static STYLE: OnceLock<Style> = OnceLock::new();

/// Turns the access log on, in `format` (the first call decides, as for the subscriber).
pub fn install(format: LogFormat, colour: bool) {
    let json = matches!(format, LogFormat::Json);
    let _ = STYLE.set(Style { json, colour });
}

/// Whether a line would be written: installed, and INFO enabled for [`TARGET`].
pub fn enabled() -> bool {
    STYLE.get().is_some() && tracing::enabled!(target: "wikigate::access", tracing::Level::INFO)
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
        let _ = write!(line, ".{:06}Z", self.micros);
    }
}

/// `2026-11-30T06:20:34.123456Z  INFO wikigate::access: peer=… method=GET path="…" …`
fn pretty(line: &mut Vec<u8>, timestamp: &Timestamp<'_>, entry: &Entry<'_>, colour: bool) {
    let (dim, green, reset) = if colour {
        ("\x1b[2m", "\x1b[32m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    line.extend_from_slice(dim.as_bytes());
    timestamp.write(line);
    let _ = write!(
        line,
        "{reset} {green} INFO{reset} {dim}{TARGET}:{reset} peer={} method={} path=",
        entry.peer, entry.method
    );
    quoted(line, format_args!("{}", entry.path));
    line.extend_from_slice(b" caller=");
    quoted_or_dash(line, entry.caller);
    line.extend_from_slice(b" operation=");
    quoted_or_dash(line, entry.operation.map(Operation::id));
    let _ = write!(line, " status={} cache=", entry.status.as_u16());
    quoted_or_dash(line, entry.cache);
    let _ = writeln!(line, " duration_us={}", entry.duration.as_micros());
}

/// `{"timestamp":"…","level":"INFO","peer":"…",…,"target":"wikigate::access"}`, the order
/// `tracing`'s JSON lines have.
fn json(line: &mut Vec<u8>, timestamp: &Timestamp<'_>, entry: &Entry<'_>) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    timestamp.write(line);
    let _ = write!(
        line,
        "\",\"level\":\"INFO\",\"peer\":\"{}\",\"method\":",
        entry.peer
    );
    quoted(line, format_args!("{}", entry.method));
    line.extend_from_slice(b",\"path\":");
    quoted(line, format_args!("{}", entry.path));
    line.extend_from_slice(b",\"caller\":");
    quoted_or_dash(line, entry.caller);
    line.extend_from_slice(b",\"operation\":");
    quoted_or_dash(line, entry.operation.map(Operation::id));
    let _ = write!(line, ",\"status\":{},\"cache\":", entry.status.as_u16());
    quoted_or_dash(line, entry.cache);
    let _ = writeln!(
        line,
        ",\"duration_us\":{},\"target\":\"{TARGET}\"}}",
        entry.duration.as_micros()
    );
}

fn quoted_or_dash(line: &mut Vec<u8>, value: Option<impl std::fmt::Display>) {
    match value {
        Some(value) => quoted(line, format_args!("{value}")),
        None => line.extend_from_slice(b"\"-\""),
    }
}

/// `value` in double quotes, escaped as JSON escapes a string (which a pretty line's reader
/// can read too): `"` and `\` backslashed, control characters as `\u00XX`.
fn quoted(line: &mut Vec<u8>, value: std::fmt::Arguments<'_>) {
    line.push(b'"');
    let _ = Escaped(line).write_fmt(value);
    line.push(b'"');
}

struct Escaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            self.0.extend_from_slice(&rest.as_bytes()[..at]);
            let c = rest[at..].chars().next().expect("found");
            match c {
                '"' | '\\' => {
                    self.0.push(b'\\');
                    self.0.push(c as u8);
                }
                _ => {
                    let _ = write!(self.0, "\\u{:04x}", u32::from(c));
                }
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.extend_from_slice(rest.as_bytes());
        Ok(())
    }
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
}
