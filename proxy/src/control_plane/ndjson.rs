//! NDJSON framing: bytes as they arrive from the watch stream (chunks cut anywhere) into whole lines.
//! A line longer than the limit is refused rather than buffered without bound: a control plane (or
//! whatever sits in front of it) that never sends a newline must not exhaust the proxy's memory.

/// A line grew past the limit without ending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a watch event line is longer than {limit} bytes")]
pub struct LineTooLong {
    pub limit: usize,
}

/// Accumulates chunks; yields each complete line (without its `\n`, and without a `\r` before it).
#[derive(Debug)]
pub struct Lines {
    partial: Vec<u8>,
    limit: usize,
}

impl Lines {
    /// Lines of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Lines {
            partial: Vec::new(),
            limit,
        }
    }

    /// Appends `chunk` and returns the lines it completed, in order; empty lines are skipped. After an
    /// error the stream is unusable (the caller reconnects).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(end);
            self.append(head)?;
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.is_empty() {
                out.push(line);
            }
            rest = &tail[1..];
        }
        self.append(rest)?;
        Ok(out)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), LineTooLong> {
        if self.partial.len() + bytes.len() > self.limit {
            self.partial = Vec::new();
            return Err(LineTooLong { limit: self.limit });
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strings(lines: Vec<Vec<u8>>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn a_line_split_across_chunks_is_yielded_once_complete() {
        let mut l = Lines::new(1024);
        assert!(l.push(b"{\"type\":\"hea").unwrap().is_empty());
        assert!(l.push(b"rtbeat\",").unwrap().is_empty());
        assert_eq!(
            strings(l.push(b"\"version\":3}\n").unwrap()),
            [r#"{"type":"heartbeat","version":3}"#]
        );
    }

    #[test]
    fn several_lines_in_one_chunk_come_out_in_order_with_the_tail_kept() {
        let mut l = Lines::new(1024);
        let got = l.push(b"one\ntwo\r\n\nthree\nfou").unwrap();
        assert_eq!(strings(got), ["one", "two", "three"]);
        assert_eq!(strings(l.push(b"r\n").unwrap()), ["four"]);
    }

    #[test]
    fn an_over_long_line_is_refused_even_when_it_arrives_in_small_chunks() {
        let mut l = Lines::new(8);
        assert_eq!(strings(l.push(b"12345678\n").unwrap()), ["12345678"]);
        assert!(l.push(b"12345").unwrap().is_empty());
        assert_eq!(l.push(b"6789").unwrap_err(), LineTooLong { limit: 8 });
        let mut l = Lines::new(8);
        assert!(l.push(b"ok\n123456789\n").is_err());
    }
}
