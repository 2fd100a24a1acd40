//! Lines leave the request path in memory: a request appends its line to a shared buffer and
//! a writer thread hands the buffer to the file (or stdout) in one write at a time.
//!
//! A `write` per request cost ~11 µs of a ~75 µs request with every feature on (same run, with
//! and without the access log, benches/README.md), and it ran on the event loop: a slow disk
//! (NFS at a facility) stalled every connection of that thread. Here a request takes a mutex
//! for a memcpy; the writer gathers the lines of up to `flush_interval` into one write. Lines
//! reach the file within `flush_interval` of their request's end; `flush` (at exit) and
//! dropping the writer (a reload replaced the plugin) write out whatever is held.
//!
//! Memory is bounded: when the disk falls `MAX_PENDING` behind, further lines are dropped,
//! counted, and reported in the gateway's log, never held without limit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of lines held for the writer at most (~14 000 lines).
const MAX_PENDING: usize = 8 << 20;
/// Held bytes that make the writer go at once instead of finishing its gathering wait.
const WRITE_SOON: usize = 256 << 10;
/// How long `flush` waits for a writer stuck on its disk.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// Lines refused since the writer last reported it: the buffer was full.
    dropped: u64,
    /// The writer waits for a first line: the next `push` wakes it.
    idle: bool,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    /// Write what is held now, without gathering (`flush`, `Drop`).
    hurry: bool,
    /// Write what is held, then end the thread.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer.
    wake: Condvar,
    /// Tells `flush` a batch was written.
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain bytes and flags: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct LineWriter {
    shared: Arc<Shared>,
}

impl LineWriter {
    /// Starts the writer thread for `out`. `interval`: how long it gathers lines after the
    /// first one before writing (zero: each line as soon as the thread gets it).
    pub fn start(out: Box<dyn Write + Send>, interval: Duration) -> std::io::Result<LineWriter> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&theirs, out, interval))?;
        Ok(LineWriter { shared })
    }

    /// Queues one line (with its newline). Never blocks on the disk.
    pub fn push(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.pending.len() + line.len() > MAX_PENDING {
            state.dropped += 1;
            return;
        }
        let before = state.pending.len();
        state.pending.extend_from_slice(line);
        // Woken once: when it waits for a first line, or when the batch grows past WRITE_SOON.
        if state.idle || (before < WRITE_SOON && state.pending.len() >= WRITE_SOON) {
            state.idle = false;
            self.shared.wake.notify_one();
        }
    }

    /// Returns once every line queued before the call is written (at most `FLUSH_WAIT`).
    pub fn flush(&self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut state = self.shared.lock();
        if state.pending.is_empty() && !state.writing {
            return;
        }
        state.hurry = true;
        self.shared.wake.notify_one();
        while !state.pending.is_empty() || state.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = match self.shared.written.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for LineWriter {
    /// The thread writes what is held and ends; not joined, so a slow disk holds up nobody.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stop = true;
        self.shared.wake.notify_one();
    }
}

/// The writer thread: waits for a line, gathers for `interval`, writes the batch, repeats.
fn write_lines(shared: &Shared, mut out: Box<dyn Write + Send>, interval: Duration) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && !state.stop {
            state.idle = true;
            state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.idle = false;
        // Lines of the next `interval` leave with this one in a single write.
        let gather_until = Instant::now() + interval;
        while !(state.stop || state.hurry || state.pending.len() >= WRITE_SOON) {
            let left = gather_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = match shared.wake.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        state.hurry = false;
        std::mem::swap(&mut state.pending, &mut batch);
        let dropped = std::mem::take(&mut state.dropped);
        let stop = state.stop;
        state.writing = true;
        drop(state);

        // A full disk or a closed stdout must not fail requests; the gateway's log says so.
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            log::warn!(
                "access_log: writing {} bytes of lines failed: {e}",
                batch.len()
            );
        }
        if dropped > 0 {
            log::warn!(
                "access_log: {dropped} lines dropped: the log's destination fell {} MiB behind",
                MAX_PENDING >> 20
            );
        }
        batch.clear();
        if batch.capacity() > WRITE_SOON * 4 {
            batch.shrink_to(WRITE_SOON);
        }

        let mut state = shared.lock();
        state.writing = false;
        shared.written.notify_all();
        if stop && state.pending.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that records what it was given, write by write.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Waits up to 2 s for `done`.
    fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    impl Recorder {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().expect("lock").concat()
        }
        fn writes(&self) -> usize {
            self.0.lock().expect("lock").len()
        }
    }

    #[test]
    fn lines_of_one_interval_leave_in_one_write_and_flush_waits_for_them() {
        let out = Recorder::default();
        let writer =
            LineWriter::start(Box::new(out.clone()), Duration::from_secs(5)).expect("start");
        for i in 0..100 {
            writer.push(format!("line {i}\n").as_bytes());
        }
        // Gathering for 5 s: nothing written yet, until `flush` asks for it.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(out.writes(), 0);
        writer.flush();
        assert_eq!(out.writes(), 1);
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.bytes(), expected.as_bytes());
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_a_flush() {
        let out = Recorder::default();
        let writer =
            LineWriter::start(Box::new(out.clone()), Duration::from_millis(20)).expect("start");
        writer.push(b"one\n");
        wait_until(|| !out.bytes().is_empty());
        assert_eq!(out.bytes(), b"one\n");
        // The writer went idle again and wakes for the next line.
        writer.push(b"two\n");
        wait_until(|| out.writes() >= 2);
        assert_eq!(out.bytes(), b"one\ntwo\n");
    }

    #[test]
    fn dropping_the_writer_writes_what_it_holds() {
        let out = Recorder::default();
        let writer =
            LineWriter::start(Box::new(out.clone()), Duration::from_secs(60)).expect("start");
        writer.push(b"last\n");
        drop(writer);
        wait_until(|| !out.bytes().is_empty());
        assert_eq!(out.bytes(), b"last\n");
    }

    /// A destination that never finishes a write: a stuck disk.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_destination_bounds_memory_and_never_blocks_a_push() {
        let writer = LineWriter::start(Box::new(Stuck), Duration::ZERO).expect("start");
        writer.push(b"first\n");
        std::thread::sleep(Duration::from_millis(50));
        let line = vec![b'x'; 1024];
        let started = Instant::now();
        for _ in 0..(MAX_PENDING / 1024 + 100) {
            writer.push(&line);
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let state = writer.shared.lock();
        assert!(state.pending.len() <= MAX_PENDING);
        assert!(state.dropped >= 100, "dropped {}", state.dropped);
        drop(state);
        // `flush` gives up after FLUSH_WAIT instead of hanging the exit.
        let started = Instant::now();
        writer.flush();
        assert!(started.elapsed() < FLUSH_WAIT + Duration::from_secs(1));
    }
}
