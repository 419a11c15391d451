//! Frames and their ordered headers.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

use crate::Command;

/// Where a header name or value lives: in the decoded frame's bytes (no copy)
/// or in the owned side buffer (escaped on the wire, or added by a builder).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Loc {
    owned: bool,
    start: u32,
    end: u32,
}

impl Loc {
    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Clone, Copy)]
struct Entry {
    name: Loc,
    value: Loc,
}

/// A frame's headers, in wire order, every occurrence kept.
///
/// Decoded headers point into the frame's input buffer: decoding copies
/// nothing unless a header carried escapes. Lookup returns the first
/// occurrence, as the spec says repeated headers are resolved.
#[derive(Clone, Default)]
pub struct Headers {
    text: Bytes,
    owned: String,
    entries: Vec<Entry>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decoder-side constructor: the entries reference `text` (validated
    /// UTF-8 ranges) or `owned`.
    pub(crate) fn from_parts(
        text: Bytes,
        owned: String,
        spans: Vec<(Range<usize>, bool, Range<usize>, bool)>,
    ) -> Self {
        let loc = |r: Range<usize>, owned: bool| Loc {
            owned,
            start: r.start as u32,
            end: r.end as u32,
        };
        let entries = spans
            .into_iter()
            .map(|(n, no, v, vo)| Entry {
                name: loc(n, no),
                value: loc(v, vo),
            })
            .collect();
        Headers {
            text,
            owned,
            entries,
        }
    }

    fn bytes_at(&self, loc: Loc) -> &[u8] {
        if loc.owned {
            &self.owned.as_bytes()[loc.range()]
        } else {
            &self.text[loc.range()]
        }
    }

    fn str_at(&self, loc: Loc) -> &str {
        if loc.owned {
            &self.owned[loc.range()]
        } else {
            // The decoder validated this range as UTF-8 before storing it.
            std::str::from_utf8(&self.text[loc.range()]).unwrap_or_default()
        }
    }

    /// Appends a header (after any with the same name).
    pub fn push(&mut self, name: &str, value: &str) {
        if self.entries.capacity() == 0 {
            // Frames built by hand usually get a few headers: grow once.
            self.entries.reserve(8);
            self.owned.reserve(256);
        }
        let mut add = |s: &str| {
            let start = self.owned.len() as u32;
            self.owned.push_str(s);
            Loc {
                owned: true,
                start,
                end: self.owned.len() as u32,
            }
        };
        let name = add(name);
        let value = add(value);
        self.entries.push(Entry { name, value });
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| self.bytes_at(e.name) == name.as_bytes())
            .map(|e| self.str_at(e.value))
    }

    /// Every value of headers called `name`, in wire order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |e| self.bytes_at(e.name) == name.as_bytes())
            .map(|e| self.str_at(e.value))
    }

    /// True when a header called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| self.bytes_at(e.name) == name.as_bytes())
    }

    /// Removes every header called `name`.
    pub fn remove(&mut self, name: &str) {
        let text = &self.text;
        let owned = &self.owned;
        self.entries.retain(|e| {
            let n = if e.name.owned {
                &owned.as_bytes()[e.name.range()]
            } else {
                &text[e.name.range()]
            };
            n != name.as_bytes()
        });
    }

    /// All `(name, value)` pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .map(|e| (self.str_at(e.name), self.str_at(e.value)))
    }

    /// An upper bound of the bytes the headers take unescaped on the wire
    /// (names, values, colons and EOLs), in O(1): for reserving once.
    pub(crate) fn wire_len_hint(&self) -> usize {
        self.text.len() + self.owned.len() + 2 * self.entries.len()
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<T: IntoIterator<Item = (&'a str, &'a str)>>(iter: T) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.push(n, v);
        }
        h
    }
}

/// One STOMP frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers in wire order (escapes already decoded).
    pub headers: Headers,
    /// The body; for decoded frames a slice of the input buffer.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Builder: appends a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Builder: sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}
