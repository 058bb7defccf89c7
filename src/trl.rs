//! `compat="trl"`: TRL 0.19.1's `DataCollatorForCompletionOnlyLM` masking, reproduced exactly.
//!
//! TRL works on token ids, not text: the labels start as the ids with every id equal to the pad
//! id replaced by -100 (transformers' parent collator), and the template ids are searched in
//! those labels. Its rules, which this module follows step by step:
//! - response template only: the *last* match wins; everything up to its end is masked; no
//!   match masks the whole row;
//! - with an instruction template: collect the end of every response match and the start of
//!   every instruction match (matches may overlap); a row with no response match is masked
//!   whole (and then has no instruction match either); a row with no instruction match is
//!   masked whole; if the first instruction comes after the first response, 0 is prepended to
//!   the instruction starts; the i-th pair `zip(instructions, responses)` masks `[start, end)`
//!   (`[0, end)` for the first pair); with more instructions than responses, everything from
//!   the last instruction on is masked.
//!
//! Working on the unpadded row is the same as TRL's work on the padded one: padding labels are
//! -100 and no template id is negative, so no match touches the padding and match positions
//! only shift. What differs is whether a masked range reaches into the padding, which TRL then
//! labels `ignore_index`: [`TrlOutcome`] says so for each side.
//!
//! The rule: docs/masking.md#trl-compatibility-mode.

/// What TRL's search found in one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrlOutcome {
    /// The response template matched somewhere.
    pub response_found: bool,
    /// The instruction template matched somewhere (always true without one).
    pub instruction_found: bool,
    /// TRL masks a range that covers the padding when the row is padded on the left (its first
    /// range starts at 0) or on the right (it masks the row to its end): the padding's labels
    /// are then `ignore_index`, not -100.
    pub masks_left_padding: bool,
    /// See [`TrlOutcome::masks_left_padding`].
    pub masks_right_padding: bool,
}

/// Start of every (possibly overlapping) match of `pattern` in `labels`.
fn matches<'a>(labels: &'a [i64], pattern: &'a [i64]) -> impl Iterator<Item = usize> + 'a {
    let n = pattern.len();
    let first = pattern.first().copied();
    (0..labels.len()).filter(move |&p| Some(labels[p]) == first && labels.get(p..p + n) == Some(pattern))
}

/// Fills `labels` for one row as TRL 0.19.1 does. `pad_token_id` labels become -100 (TRL's
/// parent hard-codes -100 there, whatever `ignore_index` is).
///
/// ```
/// use sftmask::trl::mask_row;
/// let ids = [5, 1, 2, 7, 8, 1, 2, 9];
/// let mut labels = [0i64; 8];
/// let out = mask_row(&ids, &mut labels, &[1, 2], None, Some(0), -100);
/// assert!(out.response_found);
/// assert_eq!(labels, [-100, -100, -100, -100, -100, -100, -100, 9]); // last match wins
/// ```
pub fn mask_row(
    ids: &[i64],
    labels: &mut [i64],
    response: &[i64],
    instruction: Option<&[i64]>,
    pad_token_id: Option<i64>,
    ignore_index: i64,
) -> TrlOutcome {
    for (label, &id) in labels.iter_mut().zip(ids) {
        *label = if Some(id) == pad_token_id { -100 } else { id };
    }
    let mut outcome = TrlOutcome {
        response_found: false,
        instruction_found: true,
        masks_left_padding: false,
        masks_right_padding: false,
    };
    let whole = |labels: &mut [i64], outcome: &mut TrlOutcome| {
        labels.fill(ignore_index);
        outcome.masks_left_padding = true;
        outcome.masks_right_padding = true;
    };
    match instruction {
        None => match matches(labels, response).last() {
            Some(start) => {
                outcome.response_found = true;
                let end = (start + response.len()).min(labels.len());
                labels[..end].fill(ignore_index);
                outcome.masks_left_padding = true;
            }
            None => whole(labels, &mut outcome),
        },
        Some(instruction) => {
            let response_ends: Vec<usize> = matches(labels, response).map(|p| p + response.len()).collect();
            outcome.response_found = !response_ends.is_empty();
            if !outcome.response_found {
                whole(labels, &mut outcome);
            }
            let mut human_starts: Vec<usize> = matches(labels, instruction).collect();
            outcome.instruction_found = !human_starts.is_empty();
            if !outcome.instruction_found {
                whole(labels, &mut outcome);
            }
            if let (Some(&h), Some(&r)) = (human_starts.first(), response_ends.first()) {
                if h > r {
                    human_starts.insert(0, 0);
                }
            }
            for (k, (&start, &end)) in human_starts.iter().zip(&response_ends).enumerate() {
                let end = end.min(labels.len());
                let start = if k == 0 { 0 } else { start };
                if start < end {
                    labels[start..end].fill(ignore_index);
                }
                // The first pair masks from 0 of the padded row: the left padding too.
                outcome.masks_left_padding |= k == 0;
            }
            if response_ends.len() < human_starts.len() {
                if let Some(&last) = human_starts.last() {
                    labels[last..].fill(ignore_index);
                    outcome.masks_right_padding = true;
                }
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ids: &[i64], resp: &[i64], ins: Option<&[i64]>) -> (Vec<i64>, TrlOutcome) {
        let mut labels = vec![0; ids.len()];
        let out = mask_row(ids, &mut labels, resp, ins, Some(0), -100);
        (labels, out)
    }

    #[test]
    fn response_only_missing_masks_row() {
        let (l, o) = run(&[3, 4, 5], &[9], None);
        assert_eq!(l, vec![-100; 3]);
        assert!(!o.response_found);
    }

    #[test]
    fn pad_id_is_masked_and_never_matched() {
        // The template holds the pad id (0): it can never be found (trl#1191).
        let (l, o) = run(&[3, 0, 5, 6], &[0, 5], None);
        assert!(!o.response_found);
        assert_eq!(l, vec![-100; 4]);
    }

    #[test]
    fn multi_turn_pairs() {
        // H=7, A=8: "7 a 8 b 7 c 8 d" trains b and d.
        let ids = [7, 1, 8, 2, 7, 3, 8, 4];
        let (l, o) = run(&ids, &[8], Some(&[7]));
        assert!(o.response_found && o.instruction_found);
        assert_eq!(l, vec![-100, -100, -100, 2, -100, -100, -100, 4]);
    }

    #[test]
    fn prepend_zero_when_first_instruction_is_late() {
        // The first user header tokenized differently: the first response comes first.
        let ids = [1, 8, 2, 7, 3, 8, 4];
        let (l, _) = run(&ids, &[8], Some(&[7]));
        assert_eq!(l, vec![-100, -100, 2, -100, -100, -100, 4]);
    }

    #[test]
    fn trailing_instruction_is_masked() {
        let ids = [7, 1, 8, 2, 7, 3];
        let (l, _) = run(&ids, &[8], Some(&[7]));
        assert_eq!(l, vec![-100, -100, -100, 2, -100, -100]);
    }

    #[test]
    fn missing_instruction_masks_row() {
        let ids = [1, 8, 2];
        let (l, o) = run(&ids, &[8], Some(&[7]));
        assert!(o.response_found && !o.instruction_found);
        assert_eq!(l, vec![-100; 3]);
    }

    #[test]
    fn overlapping_matches_count() {
        // Template [5, 5] in [5, 5, 5, 1]: matches at 0 and 1, the last (1) wins.
        let (l, _) = run(&[5, 5, 5, 1], &[5, 5], None);
        assert_eq!(l, vec![-100, -100, -100, 1]);
    }
}
