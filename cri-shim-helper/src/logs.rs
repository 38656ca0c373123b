//! The CRI container log format: `<RFC3339Nano> <stdout|stderr> <P|F> <content>\n`.
//!
//! Invariant: every byte the container wrote appears exactly once, in order per
//! stream; a line longer than [`MAX_LINE`] is split into `P` (partial) records
//! followed by one `F` (full) record, as containerd's CRI plugin does.

use std::io::{self, Write};

/// Longest content written in one record; longer lines become partial records.
pub const MAX_LINE: usize = 16 * 1024;

/// The stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits one stream's bytes into CRI log records. Holds the unterminated tail
/// of the last chunk until its newline arrives (or the stream ends).
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

/// One record: the caller stamps it with the time and writes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    /// Source stream.
    pub stream: Stream,
    /// `true` for a `P` record (the line continues in the next record).
    pub partial: bool,
    /// Content without the trailing newline.
    pub content: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for one stream.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes read from the stream and returns the records now complete.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    self.pending.extend_from_slice(&data[..pos]);
                    self.flush_full_chunks(&mut records);
                    records.push(self.take(false));
                    data = &data[pos + 1..];
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                }
            }
            self.flush_full_chunks(&mut records);
        }
        records
    }

    /// Ends the stream: an unterminated tail becomes a final `F` record.
    pub fn finish(&mut self) -> Option<Record> {
        (!self.pending.is_empty()).then(|| self.take(false))
    }

    fn flush_full_chunks(&mut self, records: &mut Vec<Record>) {
        // Emit P records while more than MAX_LINE bytes wait, so no record
        // exceeds MAX_LINE and the final piece of a line is always an F record.
        while self.pending.len() > MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            let chunk = std::mem::replace(&mut self.pending, rest);
            records.push(Record {
                stream: self.stream,
                partial: true,
                content: chunk,
            });
        }
    }

    fn take(&mut self, partial: bool) -> Record {
        Record {
            stream: self.stream,
            partial,
            content: std::mem::take(&mut self.pending),
        }
    }
}

/// Writes `record` stamped with `timestamp` (RFC 3339 with nanoseconds).
pub fn write_record(out: &mut impl Write, timestamp: &str, record: &Record) -> io::Result<()> {
    let tag = if record.partial { "P" } else { "F" };
    let mut line = Vec::with_capacity(record.content.len() + timestamp.len() + 12);
    line.extend_from_slice(timestamp.as_bytes());
    line.push(b' ');
    line.extend_from_slice(record.stream.as_str().as_bytes());
    line.push(b' ');
    line.extend_from_slice(tag.as_bytes());
    line.push(b' ');
    line.extend_from_slice(&record.content);
    line.push(b'\n');
    // One write per record keeps records whole when two streams share the file.
    out.write_all(&line)
}

/// The current time in the CRI log timestamp format.
pub fn now_rfc3339_nano() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(records: &[Record]) -> Vec<(bool, String)> {
        records
            .iter()
            .map(|r| (r.partial, String::from_utf8(r.content.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::new(Stream::Stdout);
        assert!(s.push(b"hel").is_empty());
        let r = s.push(b"lo\nworld\nta");
        assert_eq!(
            contents(&r),
            vec![(false, "hello".into()), (false, "world".into())]
        );
        assert_eq!(contents(&[s.finish().unwrap()]), vec![(false, "ta".into())]);
        assert!(s.finish().is_none());
    }

    #[test]
    fn long_line_becomes_partial_records() {
        let mut s = LineSplitter::new(Stream::Stderr);
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut r = s.push(&long);
        r.extend(s.push(b"\n"));
        let flags: Vec<bool> = r.iter().map(|r| r.partial).collect();
        assert_eq!(flags, vec![true, true, false]);
        assert_eq!(r.iter().map(|r| r.content.len()).sum::<usize>(), long.len());
        assert_eq!(r[2].content.len(), 10);
    }

    #[test]
    fn empty_line_is_a_record() {
        let mut s = LineSplitter::new(Stream::Stdout);
        assert_eq!(contents(&s.push(b"\n")), vec![(false, String::new())]);
    }

    #[test]
    fn record_format() {
        let mut out = Vec::new();
        let rec = Record {
            stream: Stream::Stderr,
            partial: true,
            content: b"abc".to_vec(),
        };
        write_record(&mut out, "2024-01-02T03:04:05.000000006Z", &rec).unwrap();
        assert_eq!(out, b"2024-01-02T03:04:05.000000006Z stderr P abc\n");
    }
}
