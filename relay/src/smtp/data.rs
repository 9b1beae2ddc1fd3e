//! Message content readers: DATA (dot-terminated) and BDAT (counted).
//!
//! Both are pure, incremental byte machines. They enforce the rules that
//! keep us out of SMTP smuggling (CVE-2023-51764 and its kin): data ends only
//! at `<CRLF>.<CRLF>`; a bare LF or bare CR anywhere makes the message
//! unacceptable, but is never taken as a line end; and after any error the
//! reader keeps consuming up to the real end of data, so what follows inside
//! the message is never parsed as commands.

/// Longest text line, without its CRLF (RFC 5321 §4.5.3.1.6: 1000 with it).
pub(crate) const MAX_LINE: usize = 998;

/// Why message content is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentError {
    TooLarge,
    BareLf,
    BareCr,
    LineTooLong,
}

/// Tracks line endings and lengths over a byte stream.
#[derive(Clone, Debug, Default)]
struct Lines {
    /// The previous byte was a CR not yet matched by LF.
    cr: bool,
    line_len: usize,
    error: Option<ContentError>,
}

impl Lines {
    fn fail(&mut self, e: ContentError) {
        self.error.get_or_insert(e);
    }

    /// Account for `byte`; true when it ends a line (the LF of a CRLF).
    #[inline]
    fn push(&mut self, byte: u8) -> bool {
        match (self.cr, byte) {
            (true, b'\n') => {
                self.cr = false;
                self.line_len = 0;
                return true;
            }
            (true, _) => {
                self.fail(ContentError::BareCr);
                self.line_len += 1;
            }
            (false, b'\n') => {
                self.fail(ContentError::BareLf);
                self.line_len += 1;
            }
            _ => self.line_len += 1,
        }
        self.cr = byte == b'\r';
        if self.line_len > MAX_LINE + usize::from(self.cr) {
            self.fail(ContentError::LineTooLong);
        }
        false
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At the start of a line (after CRLF).
    LineStart,
    InLine,
    /// A line that began with `.`.
    Dot,
    /// `.` then CR at the start of a line.
    DotCr,
}

/// Reads DATA content up to `<CRLF>.<CRLF>`, removing dot-stuffing
/// (RFC 5321 §4.5.2). The body keeps its CRLF line endings.
#[derive(Debug)]
pub struct DataReader {
    at: At,
    lines: Lines,
    body: Vec<u8>,
    max_size: usize,
    size: usize,
}

impl DataReader {
    pub fn new(max_size: usize) -> Self {
        Self {
            at: At::LineStart,
            lines: Lines::default(),
            body: Vec::new(),
            max_size,
            size: 0,
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.size > self.max_size {
            self.lines.fail(ContentError::TooLarge);
            // Nothing of an oversized message is kept: reading goes on
            // only to find its end.
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }

    /// Feed received bytes. Returns `Some(n)` when the end of data was found
    /// after `n` bytes of `input` (the rest belongs to the next command), or
    /// `None` when all of `input` was consumed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        // Room for this read at once, not a doubling every few lines;
        // never more than the size limit leaves.
        self.body
            .reserve(input.len().min(self.max_size.saturating_sub(self.size)));
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.at {
                At::LineStart if b == b'.' => {
                    self.at = At::Dot;
                    self.lines.line_len = 1;
                }
                At::Dot if b == b'\r' => self.at = At::DotCr,
                At::DotCr if b == b'\n' => return Some(i),
                At::DotCr => {
                    // ".\r" then something else: a stuffed line holding a
                    // bare CR. The dot was stuffing; the CR is kept.
                    self.at = At::InLine;
                    self.lines.cr = true;
                    self.keep(b"\r");
                    self.take(b);
                }
                At::Dot | At::LineStart | At::InLine => {
                    self.at = At::InLine;
                    // Copy the run of ordinary bytes at once.
                    let run_end = memchr::memchr2(b'\r', b'\n', &input[i - 1..])
                        .map_or(input.len(), |p| i - 1 + p);
                    if run_end > i - 1 && !self.lines.cr {
                        let run = &input[i - 1..run_end];
                        self.keep_run(run);
                        i = run_end;
                    } else {
                        self.take(b);
                    }
                }
            }
        }
        None
    }

    /// A run of ordinary bytes at once, failing as `take` byte by byte
    /// would: whichever limit the run crosses first (the line's on a tie)
    /// is the error, so the answer never depends on how reads cut the input.
    fn keep_run(&mut self, run: &[u8]) {
        // Index in `run` of the first byte past each limit.
        let line_over = (MAX_LINE + 1).saturating_sub(self.lines.line_len + 1);
        let size_over = self.max_size.saturating_sub(self.size);
        let crosses_line = self.lines.line_len + run.len() > MAX_LINE;
        if crosses_line && line_over <= size_over {
            self.lines.fail(ContentError::LineTooLong);
        }
        self.lines.line_len += run.len();
        self.keep(run);
        if crosses_line {
            self.lines.fail(ContentError::LineTooLong);
        }
    }

    fn take(&mut self, b: u8) {
        if self.lines.push(b) {
            self.at = At::LineStart;
        }
        self.keep(&[b]);
    }

    /// The message, once the end of data was found.
    pub fn finish(self) -> Result<Vec<u8>, ContentError> {
        match self.lines.error {
            Some(e) => Err(e),
            None => Ok(self.body),
        }
    }
}

/// Checks BDAT chunks (RFC 3030): the same line rules as DATA, over counted
/// bytes with no dot-stuffing.
#[derive(Debug)]
pub struct BdatCollector {
    lines: Lines,
    body: Vec<u8>,
    max_size: usize,
    size: usize,
}

impl BdatCollector {
    pub fn new(max_size: usize) -> Self {
        Self {
            lines: Lines::default(),
            body: Vec::new(),
            max_size,
            size: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        // The first byte past the size limit fails the message there, in
        // byte order with the line rules, wherever the chunks end.
        let over = self.max_size.saturating_sub(self.size);
        for (i, &b) in chunk.iter().enumerate() {
            self.lines.push(b);
            if i == over {
                self.lines.fail(ContentError::TooLarge);
            }
        }
        self.size = self.size.saturating_add(chunk.len());
        if self.size > self.max_size {
            self.lines.fail(ContentError::TooLarge);
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// After the LAST chunk: a message must end with CRLF.
    pub fn finish(mut self) -> Result<Vec<u8>, ContentError> {
        if self.lines.cr {
            self.lines.fail(ContentError::BareCr);
        }
        match self.lines.error {
            Some(e) => Err(e),
            None => {
                if !self.body.is_empty() && !self.body.ends_with(b"\r\n") {
                    self.body.extend_from_slice(b"\r\n");
                }
                Ok(self.body)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; (end offset, result).
    fn read(input: &[u8], step: usize) -> (Option<usize>, Result<Vec<u8>, ContentError>) {
        let mut r = DataReader::new(1 << 20);
        let mut offset = 0;
        for chunk in input.chunks(step.max(1)) {
            if let Some(n) = r.feed(chunk) {
                return (Some(offset + n), r.finish());
            }
            offset += chunk.len();
        }
        (None, r.finish())
    }

    /// Input, where the data ends, and the body (or error).
    type Case<'a> = (&'a [u8], Option<usize>, Result<&'a [u8], ContentError>);

    #[test]
    fn end_of_data_and_dot_stuffing() {
        let cases: &[Case] = &[
            (b".\r\n", Some(3), Ok(b"")),
            (b"a\r\n.\r\n", Some(6), Ok(b"a\r\n")),
            (b"..a\r\n.\r\nMAIL", Some(8), Ok(b".a\r\n")),
            (b"a\r\n..\r\n.\r\n", Some(10), Ok(b"a\r\n.\r\n")),
            (b"a\r\n.b\r\n.\r\n", Some(10), Ok(b"a\r\nb\r\n")),
            (b"x.\r\n.\r\n", Some(7), Ok(b"x.\r\n")),
        ];
        for (input, end, body) in cases {
            for step in [1, 2, 3, 1024] {
                let (e, b) = read(input, step);
                assert_eq!(e, *end, "{:?} step {step}", String::from_utf8_lossy(input));
                assert_eq!(
                    b.as_deref(),
                    body.as_deref(),
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    /// The smuggling forms: none of them ends the data, and each poisons
    /// the message. Only the real CRLF.CRLF ends it.
    #[test]
    fn smuggling_sequences_never_end_data() {
        let smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nspoof\r\n";
        for (sep, err) in [
            (&b"\n.\n"[..], ContentError::BareLf),
            (b"\r.\r", ContentError::BareCr),
            (b"\r\n.\n", ContentError::BareLf),
            (b"\n.\r\n", ContentError::BareLf),
            (b"\r.\r\n", ContentError::BareCr),
            (b"\r\n.\r", ContentError::BareCr),
        ] {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(sep);
            input.extend_from_slice(smuggled);
            input.extend_from_slice(b"\r\n.\r\n");
            for step in [1, 7, 4096] {
                let (end, body) = read(&input, step);
                assert_eq!(
                    end,
                    Some(input.len()),
                    "{sep:?} step {step}: data must end only at the final CRLF.CRLF"
                );
                assert_eq!(body, Err(err), "{sep:?} step {step}");
            }
        }
    }

    #[test]
    fn oversize_and_long_lines_keep_reading_to_the_real_end() {
        let mut r = DataReader::new(10);
        assert_eq!(r.feed(b"0123456789abcdef\r\n"), None);
        assert_eq!(r.feed(b"MAIL FROM:<a@b>\r\n.\r\nQUIT\r\n"), Some(20));
        assert_eq!(r.finish(), Err(ContentError::TooLarge));

        let mut long = vec![b'a'; MAX_LINE];
        long.extend_from_slice(b"\r\n.\r\n");
        assert!(
            read(&long, 100).1.is_ok(),
            "998 octets plus CRLF is allowed"
        );
        let mut long = vec![b'a'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(read(&long, 100).1, Err(ContentError::LineTooLong));
    }

    #[test]
    fn bdat_applies_the_same_line_rules() {
        let mut c = BdatCollector::new(100);
        c.push(b"a\r");
        c.push(b"\nb\r\n");
        assert_eq!(c.finish().as_deref(), Ok(&b"a\r\nb\r\n"[..]));
        let mut c = BdatCollector::new(100);
        c.push(b"a\nb\r\n");
        assert_eq!(c.finish(), Err(ContentError::BareLf));
        let mut c = BdatCollector::new(4);
        c.push(b"abcdef\r\n");
        assert_eq!(c.finish(), Err(ContentError::TooLarge));
    }

    /// Found by the `data_reader` fuzz target: a long line in a message
    /// that is also too large was refused as one or the other depending
    /// on how the reads cut it. The limit crossed first decides.
    #[test]
    fn the_first_limit_crossed_decides_the_error_however_the_input_is_read() {
        let cases: [(usize, usize, ContentError); 3] = [
            // (size limit, line length, error)
            (0, 1021, ContentError::TooLarge),
            (2000, 1021, ContentError::LineTooLong),
            (MAX_LINE, 1021, ContentError::LineTooLong),
        ];
        for (max, len, want) in cases {
            let mut input = vec![b'a'; len];
            input.extend_from_slice(b"\r\n.\r\n");
            for step in [1, 7, 500, input.len()] {
                let mut r = DataReader::new(max);
                let mut end = None;
                for piece in input.chunks(step) {
                    end = r.feed(piece);
                }
                assert!(end.is_some(), "max {max} step {step}");
                assert_eq!(r.finish(), Err(want), "max {max} step {step}");
                let mut b = BdatCollector::new(max);
                for piece in input[..len + 2].chunks(step) {
                    b.push(piece);
                }
                assert_eq!(b.finish(), Err(want), "BDAT max {max} step {step}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_split_gives_the_same_result(input in proptest::collection::vec(
            proptest::sample::select(vec![b'a', b'.', b'\r', b'\n']), 0..64), step in 1usize..8) {
            let mut whole = input.clone();
            whole.extend_from_slice(b"\r\n.\r\n");
            proptest::prop_assert_eq!(read(&whole, whole.len()), read(&whole, step));
        }
    }
}
