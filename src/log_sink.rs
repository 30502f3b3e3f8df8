//! Where log lines go: a buffer that requests append to and a thread of its own that writes it
//! out, so no request ever waits on the log's output (a slow disk, a full pipe).
//!
//! Every line the process logs goes through one [`LogSink`] — the access log's lines, which
//! `access_log` formats itself, and every other event, which the `tracing` subscriber formats
//! ([`LogSink`] is its writer) — so lines keep the order they were logged in.
//!
//! As nginx's buffered `access_log`: lines are written in batches, when [`BATCH`] bytes are
//! waiting or [`FLUSH_INTERVAL`] after the first of them was logged, whichever comes first.
//! Unlike nginx, a write never blocks: while the output cannot keep up and [`MAX_PENDING`]
//! bytes are waiting, further lines are dropped and counted ([`LogSink::dropped`], exported as
//! `wikigate_log_dropped_lines_total`), and once the output catches up a warning says how many.
//!
//! Invariants: a line is written whole or not at all, never interleaved with another;
//! [`LogSink::flush`] returns once every line logged before it was written (or after
//! [`FLUSH_TIMEOUT`], if the output is stuck: shutdown never hangs on the log).
//!
//! Why not tracing-appender's `non_blocking`: it hands each line to its worker through a
//! channel, one message (and one `Vec`) per line, and its writer writes each line with its
//! own `write` call unless wrapped in a buffer that then flushes only when full — what this
//! module does in one place is batching in memory (no per-line allocation: the access log's
//! line is copied from a reused buffer), writing a batch with one system call at 64 KiB or
//! 100 ms, counting what it drops (`non_blocking` counts too, but cannot report it as a
//! metric without a guard per call site), and a bounded `flush` for shutdown. Adopting
//! `non_blocking` would put back an allocation and a channel send per line on the hit path;
//! what the sink saves is measured in benches/README.md ("Decisions measured").

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes waiting that make the writer write them at once: nginx's `buffer=64k`. A write's
/// time in the kernel is a pause for the requests on the core the writer shares with them,
/// and larger batches showed in the hits' tail latency (benches/README.md, "Decisions
/// measured").
pub(crate) const BATCH: usize = 64 * 1024;
/// How long a line may wait for others to be written with it.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes waiting past which lines are dropped (about 20 000 access-log lines).
pub(crate) const MAX_PENDING: usize = 4 * 1024 * 1024;
/// How long [`LogSink::flush`] waits for a stuck output.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A buffered, never-blocking line writer over an output of its own thread.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: the first line of a batch, a full batch, a flush.
    work: Condvar,
    /// Wakes flushers: a batch was written.
    written: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Batches written so far, and whether one is being written now.
    batches_written: u64,
    writing: bool,
    flush_wanted: bool,
    /// Dropped since the last warning about it.
    unreported: u64,
}

impl LogSink {
    /// A sink writing to `output` from a thread of its own.
    pub fn spawn<W: Write + Send + 'static>(output: W) -> LogSink {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            written: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("wikigate-log".into())
            .spawn(move || writer.run(output))
            .expect("a thread for the log writer");
        LogSink { shared }
    }

    /// Queues one or more whole lines; drops them (counted) when too much is waiting.
    pub fn write_line(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        if pending.lines.len() + line.len() > MAX_PENDING {
            pending.unreported += 1;
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was = pending.lines.len();
        pending.lines.extend_from_slice(line);
        // Waking the writer is a system call: only for a batch's first line and a full batch.
        let wake = was == 0 || (was < BATCH && pending.lines.len() >= BATCH);
        drop(pending);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Lines dropped so far because the output could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued before the call was written, at most [`FLUSH_TIMEOUT`].
    pub fn flush(&self) {
        let mut pending = self.shared.lock();
        // The lines before this call are in the batch being written, if any, and in the next.
        let waiting = !pending.lines.is_empty();
        let target = pending.batches_written + u64::from(pending.writing) + u64::from(waiting);
        if waiting {
            pending.flush_wanted = true;
            self.shared.work.notify_one();
        }
        let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
        while pending.batches_written < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            self.shared.written.wait_for(&mut pending, left);
        }
    }
}

impl Shared {
    /// parking_lot's lock does not poison: a panic while holding it leaves whole lines
    /// behind, and the writer keeps going.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock()
    }

    /// The writer thread: takes what is waiting, in batches, and writes it out.
    fn run<W: Write>(&self, mut output: W) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let mut pending = self.lock();
            while pending.lines.is_empty() && !pending.flush_wanted {
                self.work.wait(&mut pending);
            }
            if pending.lines.len() < BATCH && !pending.flush_wanted {
                // Let the lines of the next few milliseconds join this batch.
                self.work.wait_while_for(
                    &mut pending,
                    |p| p.lines.len() < BATCH && !p.flush_wanted,
                    FLUSH_INTERVAL,
                );
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.flush_wanted = false;
            pending.writing = true;
            let unreported = std::mem::take(&mut pending.unreported);
            drop(pending);
            // An output that fails (a closed pipe) loses the batch; the writer keeps going.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
            batch.clear();
            batch.shrink_to(BATCH);
            if unreported > 0 {
                tracing::warn!(
                    dropped = unreported,
                    "log lines dropped: the log output could not keep up"
                );
            }
            let mut pending = self.lock();
            pending.batches_written += 1;
            pending.writing = false;
            drop(pending);
            self.written.notify_all();
        }
    }
}

static STDERR: OnceLock<LogSink> = OnceLock::new();

/// The process's sink over standard error, started on first use.
pub(crate) fn stderr() -> &'static LogSink {
    STDERR.get_or_init(|| LogSink::spawn(std::io::stderr()))
}

/// Lines the process's sink dropped so far (none before it started).
pub(crate) fn dropped() -> u64 {
    STDERR.get().map_or(0, LogSink::dropped)
}

/// The `tracing` subscriber's writer: each event it formats is one `write` of a whole line.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = &'a LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Write for &LogSink {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.write_line(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that says when it is written to, blocks until told to go on, and keeps what
    /// it was given.
    struct Stuck {
        entered: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go.recv();
            self.written.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink over a [`Stuck`] output: the sink, "a write began", "go on", what was written.
    type Rig = (
        LogSink,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
        Arc<Mutex<Vec<u8>>>,
    );

    fn stuck() -> Rig {
        let (entered, writing) = mpsc::channel();
        let (go, wait) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = LogSink::spawn(Stuck {
            entered,
            go: wait,
            written: Arc::clone(&written),
        });
        (sink, writing, go, written)
    }

    #[test]
    fn a_stuck_output_never_blocks_a_writer_and_drops_are_counted() {
        let (sink, writing, go, written) = stuck();
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<_>>();
        sink.write_line(&line);
        // The writer took the first line and is stuck writing it (`flush` would wake it now).
        std::thread::spawn({
            let sink = sink.clone();
            move || sink.flush()
        });
        writing.recv().unwrap();
        let lines = MAX_PENDING / line.len() * 2;
        for _ in 0..lines {
            sink.write_line(&line);
        }
        // The writes all returned; what did not fit was counted.
        let fit = MAX_PENDING / line.len();
        assert_eq!(sink.dropped() as usize, lines - fit);
        // Unstuck, it writes everything it kept, whole and in order.
        std::thread::spawn(move || while go.send(()).is_ok() {});
        sink.flush();
        let written = written.lock();
        let kept = written.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        assert!(kept.clone().all(|l| l == &line[..99]));
        assert_eq!(kept.count(), 1 + fit);
    }

    #[test]
    fn flush_returns_once_everything_logged_before_it_is_written() {
        let (sink, writing, go, written) = stuck();
        std::thread::spawn(move || while go.send(()).is_ok() && writing.recv().is_ok() {});
        for n in 0..1000 {
            sink.write_line(format!("line {n}\n").as_bytes());
        }
        sink.flush();
        let text = String::from_utf8(written.lock().clone()).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(text, expected);
        assert_eq!(sink.dropped(), 0);
    }
}
