//! The article's gdb script output: `NAME: BYTES` lines, indented a fixed width per level.

use super::model::{Context, ParseError};
use super::text::{Builder, Kind, TextParser};

impl TextParser<'_> {
    /// A `NAME: BYTES` line: an indent of 0 starts a new dump.
    pub(super) fn gdb_line(
        &mut self,
        lineno: usize,
        indent: usize,
        name: String,
        bytes: u64,
    ) -> Result<(), ParseError> {
        if !self.gdb {
            return Ok(());
        }
        if indent == 0 {
            if let Some(b) = self.other.take() {
                self.close(b);
            }
            self.other = Some(Builder::new(Kind::Gdb, lineno, None, None));
        }
        let source = self.source;
        let Some(b) = self.other.as_mut() else {
            // Part of a dump whose beginning is not in the file.
            return Ok(());
        };
        let depth = gdb_depth(b, indent, lineno, source)?;
        b.push(depth, bytes_context(name, bytes), lineno, source)
    }
}

/// The depth of a line indented `indent` spaces: the dump's first indented line sets the width of
/// one level.
fn gdb_depth(
    b: &mut Builder,
    indent: usize,
    lineno: usize,
    source: &str,
) -> Result<usize, ParseError> {
    if indent == 0 {
        return Ok(0);
    }
    let unit = *b.unit.get_or_insert(indent);
    if indent % unit != 0 {
        return Err(ParseError::new(
            source,
            Some(lineno),
            format!(
                "indentation of {indent} spaces is not a multiple of this dump's {unit} spaces per \
                 level"
            ),
        ));
    }
    Ok(indent / unit)
}

/// A context of which only its total bytes are known.
fn bytes_context(name: String, bytes: u64) -> Context {
    Context {
        name,
        ident: None,
        level: 0,
        parent: None,
        total_bytes: bytes,
        total_nblocks: None,
        free_bytes: None,
        free_chunks: None,
        used_bytes: None,
        folded: None,
        id: None,
        kind: None,
    }
}
