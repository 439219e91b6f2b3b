//! The default subscriber's field formatter: what tracing-subscriber's
//! `DefaultFields` writes with ANSI off — `name=value` pairs separated by a
//! space, the message as it is, control characters of messages and errors
//! escaped, an error's sources listed, `log.*` fields skipped (a `log`
//! record's target and place, already on the line; `DefaultFields` skips
//! them only when its `tracing-log` feature is on) — without going through
//! its styling code. With tracing-subscriber's `ansi` feature
//! on (its default, so in most programs), `DefaultFields` paints every field
//! name even when colours are off, and the fmt layer formats the fields of
//! every span when the span is created: Catga makes two `info` spans per
//! message, so that was a third of an in-process send's instructions.
//! The test below holds the two formatters to the same output.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Plain-text fields, as `DefaultFields` writes them without colours.
#[derive(Debug, Default)]
pub(crate) struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Written into a buffer this thread keeps, then handed over in one
        // piece: the fmt layer's string for a span's fields starts empty and
        // grew through seven reallocations for each of Catga's spans. (A
        // value whose formatting logs, re-entering here, writes directly.)
        BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => {
                buffer.clear();
                let mut visitor = Plain { writer: &mut *buffer, empty: true, result: Ok(()) };
                fields.record(&mut visitor);
                let written = visitor.result.and_then(|()| writer.write_str(&buffer));
                // A rare huge field (a long error, say) is not kept for the
                // thread's lifetime.
                if buffer.capacity() > MAX_KEPT {
                    *buffer = String::with_capacity(KEPT);
                }
                written
            }
            Err(_) => {
                let mut visitor = Plain { writer: &mut writer, empty: true, result: Ok(()) };
                fields.record(&mut visitor);
                visitor.result
            }
        })
    }
}

/// The buffer's usual size (a span of Catga's: ~400 bytes), and the most
/// it keeps between uses.
const KEPT: usize = 512;
const MAX_KEPT: usize = 16 * 1024;

thread_local! {
    static BUFFER: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(KEPT));
}

struct Plain<'a> {
    writer: &'a mut dyn fmt::Write,
    empty: bool,
    result: fmt::Result,
}

/// Whether `{value:?}` of this string is the string in quotes: printable
/// ASCII but `"` and `\` (what names, subjects and ids are).
fn debug_is_quoted(value: &str) -> bool {
    value.bytes().all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
}

impl Visit for Plain<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else if debug_is_quoted(value) && self.result.is_ok() && !field.name().starts_with("log.") {
            // What `{value:?}` writes, without the formatting machinery.
            let name = field.name();
            let space = if std::mem::take(&mut self.empty) { "" } else { " " };
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result =
                [space, name, "=\"", value, "\""].into_iter().try_for_each(|part| self.writer.write_str(part));
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self
                .record_debug(field, &format_args!("{} {}.sources={}", Escaped(value), field.name(), Sources(source))),
            None => self.record_debug(field, &format_args!("{}", Escaped(value))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Log records' metadata (tracing-log), already on the line.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if !std::mem::take(&mut self.empty) {
            self.result = self.writer.write_char(' ');
        }
        self.result = self.result.and_then(|()| match name {
            "message" => write!(Escaping(&mut self.writer), "{value:?}"),
            name => {
                self.writer.write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
                write!(self.writer, "{value:?}")
            }
        });
    }
}

/// Writes through to `W`, escaping the characters a terminal would act on
/// (ESC, BEL, BS, FF, DEL and the C1 controls), as tracing-subscriber does.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) =
            rest.find(|c: char| matches!(c, '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'))
        {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => write!(self.0, "\\x{:02x}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// A value's `Display`, escaped.
struct Escaped<T>(T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error and its sources as a list, `[outer, inner]`.
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&Escaped(error));
            next = error.source();
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("inner \u{1b}[31mcause")
        }
    }
    impl std::error::Error for Inner {}

    #[derive(Debug)]
    struct Outer(Inner);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Everything the default subscriber writes for some spans and events,
    /// with `fields` as the field formatter.
    fn written<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let id = crate::MessageId::from_u128(0xab);
            let span = tracing::info_span!("catga.handle", subject = "a.b", message_id = %id, n = 3u64, ok = true);
            let _entered = span.enter();
            tracing::info!("plain message");
            tracing::warn!(r#type = "kind", text = "quoted \"x\"", debug = ?(1, "two"), "a \u{1b}[2J bell\u{7} c1\u{85}");
            let error = Outer(Inner);
            tracing::error!(error = &error as &(dyn std::error::Error + 'static), "failed");
            let single = Inner;
            tracing::error!(error = &single as &(dyn std::error::Error + 'static));
            tracing::info!(kept = -1i64, "numbers");
            tracing::info!(tab = "a\tb", quote = "it's", back = "c:\\d", unicode = "é", empty = "", "strings");
            span.record("n", 4u64);
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn plain_fields_write_what_the_default_fields_write_without_colours() {
        let ours = written(PlainFields);
        assert_eq!(ours, written(DefaultFields::new()));
        assert!(ours.contains("message_id=000000000000000000000000000000ab"), "{ours}");
        assert!(ours.contains("\\x1b[2J bell\\x07 c1\\u{85}"), "escaped: {ours}");
    }
}
