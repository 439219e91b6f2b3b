//! How the CLI prints: aligned tables for people, JSON for scripts, and
//! failures on stderr (or as `{"error": ...}` with `--json`).

use std::process::ExitCode;

use serde_json::{Value, json};

/// Where and how to print.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    /// Print `value` as one JSON document (with `--json`).
    pub(crate) fn json(self, value: &Value) {
        println!("{}", serde_json::to_string_pretty(value).expect("a JSON value prints"));
    }
}

/// Why a command failed: printed, then exit status 1.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    /// A handler's error code, when the failure is an error reply.
    code: Option<String>,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: None }
    }

    /// A handler answered with an error.
    pub(crate) fn reply(code: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: Some(code.into()) }
    }

    pub(crate) fn report(self, out: Out) -> ExitCode {
        match (&self.code, out.json) {
            (Some(code), true) => out.json(&json!({"error": {"code": code, "message": self.message}})),
            (None, true) => out.json(&json!({"error": {"message": self.message}})),
            (Some(code), false) => eprintln!("error reply [{code}]: {}", self.message),
            (None, false) => eprintln!("catga: {}", self.message),
        }
        ExitCode::FAILURE
    }
}

/// A table: a header row and rows of cells, printed with aligned columns
/// (the last one unpadded).
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.len() == 1
    }

    pub(crate) fn print(&self) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// A duration in nanoseconds, for people: `850µs`, `12.3ms`, `1.20s`.
pub(crate) fn nanos(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("{}µs", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(nanos(850_000), "850µs");
        assert_eq!(nanos(12_345_678), "12.3ms");
        assert_eq!(nanos(1_200_000_000), "1.20s");
    }
}
