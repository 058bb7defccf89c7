//! Finding template occurrences in the searchable text.
//!
//! Occurrences never overlap and are found leftmost-first: scanning left to right, the first
//! position where any template matches wins; at the same position the response template wins,
//! then the instruction templates in the order given.
//!
//! The rule: docs/masking.md#template-search.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use memchr::memmem;

use crate::error::{Error, Result};

/// One template occurrence: its byte span and whether it is the response template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// First byte of the template.
    pub start: u32,
    /// One past its last byte: where the following text begins.
    pub end: u32,
    /// `true` for the response template, `false` for an instruction template.
    pub is_response: bool,
}

/// The response template and the (optional) instruction templates, with prebuilt finders.
///
/// ```
/// use sftmask::Templates;
/// let t = Templates::new(b"### Assistant:".to_vec(), vec![b"### User:".to_vec()]).unwrap();
/// let mut occ = Vec::new();
/// t.find(b"### User: hi ### Assistant: yo", &mut occ);
/// assert_eq!(occ.len(), 2);
/// assert!(occ[1].is_response);
/// assert_eq!(occ[1].end, 27);
/// ```
#[derive(Debug, Clone)]
pub struct Templates {
    response: Vec<u8>,
    instructions: Vec<Vec<u8>>,
    finder: memmem::Finder<'static>,
    multi: Option<AhoCorasick>,
}

impl Templates {
    /// Builds the finders.
    ///
    /// # Errors
    /// [`Error::EmptyTemplate`] when a template has no bytes, and [`Error::InvalidArgument`] when
    /// an instruction template equals the response template.
    pub fn new(response: Vec<u8>, instructions: Vec<Vec<u8>>) -> Result<Self> {
        if response.is_empty() {
            return Err(Error::EmptyTemplate {
                what: "response",
                template: "''".into(),
            });
        }
        for ins in &instructions {
            if ins.is_empty() {
                return Err(Error::EmptyTemplate {
                    what: "instruction",
                    template: "''".into(),
                });
            }
            if *ins == response {
                return Err(Error::InvalidArgument(format!(
                    "the instruction template {:?} is the response template: every occurrence would be ambiguous",
                    String::from_utf8_lossy(ins)
                )));
            }
        }
        let finder = memmem::Finder::new(&response).into_owned();
        let multi = if instructions.is_empty() {
            None
        } else {
            let patterns = std::iter::once(&response).chain(&instructions);
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostFirst)
                .build(patterns)
                .map_err(|e| Error::InvalidArgument(format!("cannot build the template finder: {e}")))?;
            Some(ac)
        };
        Ok(Templates {
            response,
            instructions,
            finder,
            multi,
        })
    }

    /// The response template's bytes.
    pub fn response(&self) -> &[u8] {
        &self.response
    }

    /// The instruction templates' bytes.
    pub fn instructions(&self) -> &[Vec<u8>] {
        &self.instructions
    }

    /// `true` when instruction templates were given (multi-turn regions).
    pub fn has_instructions(&self) -> bool {
        !self.instructions.is_empty()
    }

    /// Appends every occurrence in `text` to `out` (which is cleared first), in order.
    pub fn find(&self, text: &[u8], out: &mut Vec<Occurrence>) {
        out.clear();
        match &self.multi {
            None => {
                let n = self.response.len() as u32;
                out.extend(self.finder.find_iter(text).map(|s| Occurrence {
                    start: s as u32,
                    end: s as u32 + n,
                    is_response: true,
                }));
            }
            Some(ac) => out.extend(ac.find_iter(text).map(|m| Occurrence {
                start: m.start() as u32,
                end: m.end() as u32,
                is_response: m.pattern().as_usize() == 0,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(t: &Templates, text: &[u8]) -> Vec<(u32, u32, bool)> {
        let mut occ = Vec::new();
        t.find(text, &mut occ);
        occ.iter().map(|o| (o.start, o.end, o.is_response)).collect()
    }

    #[test]
    fn non_overlapping_leftmost() {
        let t = Templates::new(b"\n\n".to_vec(), vec![]).unwrap();
        assert_eq!(spans(&t, b"a\n\n\nb\n\n"), vec![(1, 3, true), (5, 7, true)]);
    }

    #[test]
    fn response_wins_ties() {
        let t = Templates::new(b"### A".to_vec(), vec![b"### ".to_vec()]).unwrap();
        assert_eq!(spans(&t, b"### U ### A"), vec![(0, 4, false), (6, 11, true)]);
    }

    #[test]
    fn empty_and_equal_templates_rejected() {
        assert!(matches!(
            Templates::new(vec![], vec![]),
            Err(Error::EmptyTemplate { .. })
        ));
        assert!(matches!(
            Templates::new(b"x".to_vec(), vec![vec![]]),
            Err(Error::EmptyTemplate { .. })
        ));
        assert!(matches!(
            Templates::new(b"x".to_vec(), vec![b"x".to_vec()]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
