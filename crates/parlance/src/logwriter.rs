//! The text log's writer: control characters inside an event are escaped, so a field a
//! caller chose (a model name with a newline, ANSI escapes) can neither write a second,
//! forged line nor drive the reader's terminal. Each event arrives as one write that
//! ends with its own newline, which is kept.

use std::io::Write;

pub(crate) struct Escaping {
    /// Colour codes (`ESC[...m`) pass when the log is a terminal and colours are on.
    pub colours: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Escaping {
    type Writer = EscapingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            colours: self.colours,
        }
    }
}

pub(crate) struct EscapingWriter {
    colours: bool,
}

impl Write for EscapingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(&escape(buf, self.colours))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Length of a colour code (`ESC [ digits/semicolons m`) at the start of `b`.
fn colour_code(b: &[u8]) -> Option<usize> {
    let rest = b.strip_prefix(b"\x1b[")?;
    let n = rest
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b';')
        .count();
    (rest.get(n) == Some(&b'm')).then_some(n + 3)
}

pub(crate) fn escape(buf: &[u8], colours: bool) -> Vec<u8> {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut out = Vec::with_capacity(buf.len() + 8);
    let mut rest = body;
    while let Some((&c, after)) = rest.split_first() {
        if colours {
            if let Some((code, after)) = colour_code(rest).and_then(|n| rest.split_at_checked(n)) {
                out.extend_from_slice(code);
                rest = after;
                continue;
            }
        }
        rest = after;
        match c {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{c:02x}").as_bytes()),
            _ => out.push(c),
        }
    }
    if body.len() < buf.len() {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_cannot_start_a_line_or_colour_the_terminal() {
        let line = b"INFO request model=a\nINFO forged \x1b[31mred\x1b]0;title\x07\n";
        let out = String::from_utf8(escape(line, false)).unwrap();
        assert_eq!(
            out,
            "INFO request model=a\\nINFO forged \\x1b[31mred\\x1b]0;title\\x07\n"
        );
        assert_eq!(out.matches('\n').count(), 1);
        let coloured = escape(b"\x1b[2mtime\x1b[0m x\x1b]0;t\x07\n", true);
        assert_eq!(coloured, b"\x1b[2mtime\x1b[0m x\\x1b]0;t\\x07\n");
    }
}
