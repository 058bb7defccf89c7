//! The region rule: which byte ranges of the searchable text are the assistant's response.
//!
//! - Without instruction templates: one region, from the end of the *last* response template to
//!   the end of the text (TRL's behaviour: only the final answer is trained).
//! - With instruction templates: one region per response template, from its end to the start of
//!   the next template of either kind (or the end of the text). `TrainOn::Last` keeps only the
//!   final one.
//!
//! The rule: docs/masking.md#response-regions.

use crate::search::Occurrence;

/// Which response regions are trained when instruction templates are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainOn {
    /// Every assistant turn.
    #[default]
    All,
    /// Only the final assistant turn.
    Last,
}

/// A half-open byte range `[start, end)` of the searchable text.
pub type Region = (u32, u32);

/// Computes the response regions of one example from its template occurrences.
///
/// ```
/// use sftmask::{regions, Occurrence, TrainOn};
/// let occ = [
///     Occurrence { start: 0, end: 4, is_response: false },
///     Occurrence { start: 10, end: 14, is_response: true },
///     Occurrence { start: 20, end: 24, is_response: false },
///     Occurrence { start: 30, end: 34, is_response: true },
/// ];
/// let mut out = Vec::new();
/// regions(&occ, 40, true, TrainOn::All, &mut out);
/// assert_eq!(out, vec![(14, 20), (34, 40)]);
/// regions(&occ, 40, true, TrainOn::Last, &mut out);
/// assert_eq!(out, vec![(34, 40)]);
/// ```
pub fn regions(occurrences: &[Occurrence], text_len: u32, multi_turn: bool, train_on: TrainOn, out: &mut Vec<Region>) {
    out.clear();
    if !multi_turn {
        if let Some(last) = occurrences.iter().rev().find(|o| o.is_response) {
            out.push((last.end, text_len));
        }
    } else {
        for (i, occ) in occurrences.iter().enumerate() {
            if occ.is_response {
                let end = occurrences.get(i + 1).map_or(text_len, |next| next.start);
                out.push((occ.end, end));
            }
        }
        if train_on == TrainOn::Last && out.len() > 1 {
            let last = out[out.len() - 1];
            out.clear();
            out.push(last);
        }
    }
    out.retain(|(s, e)| e > s);
}
