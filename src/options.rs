//! Option values as the user spells them (`"left"`, `"warn"`, …), parsed once into enums. The
//! binding passes the strings through; the rules and the messages live here.

use std::str::FromStr;

use crate::batch::Layout;
use crate::error::{Error, Result};
use crate::regions::TrainOn;

/// What to do with a row in which no response template is found (its labels are all
/// `ignore_index` in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissing {
    /// Report it: the Python layer warns once per call with the count.
    #[default]
    Warn,
    /// Fail the call with [`Error::MissingTemplate`] naming the first such row.
    Error,
    /// Say nothing (the row is still counted in the stats).
    Ignore,
}

fn bad(option: &str, allowed: &str, got: &str) -> Error {
    Error::InvalidArgument(format!("{option} must be {allowed}, got {got:?}"))
}

impl FromStr for OnMissing {
    type Err = Error;
    /// ```
    /// use sftmask::OnMissing;
    /// assert_eq!("error".parse::<OnMissing>().unwrap(), OnMissing::Error);
    /// assert!("loud".parse::<OnMissing>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "warn" => Ok(OnMissing::Warn),
            "error" => Ok(OnMissing::Error),
            "ignore" => Ok(OnMissing::Ignore),
            other => Err(bad("on_missing", "'warn', 'error' or 'ignore'", other)),
        }
    }
}

impl FromStr for TrainOn {
    type Err = Error;
    /// ```
    /// use sftmask::TrainOn;
    /// assert_eq!("last".parse::<TrainOn>().unwrap(), TrainOn::Last);
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(TrainOn::All),
            "last" => Ok(TrainOn::Last),
            other => Err(bad("train_on", "'all' or 'last'", other)),
        }
    }
}

/// Which side of a row padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Tokens first, then padding (transformers' default).
    #[default]
    Right,
    /// Padding first (generation-style batches).
    Left,
}

impl FromStr for PaddingSide {
    type Err = Error;
    /// ```
    /// use sftmask::PaddingSide;
    /// assert_eq!("left".parse::<PaddingSide>().unwrap(), PaddingSide::Left);
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "right" => Ok(PaddingSide::Right),
            "left" => Ok(PaddingSide::Left),
            other => Err(bad("padding_side", "'right' or 'left'", other)),
        }
    }
}

/// How a batch is laid out and padded: everything `collate` needs besides the rows.
///
/// ```
/// use sftmask::{Layout, PaddingSide, Padding};
/// let p = Padding::new(false, PaddingSide::Left, Some(8), Some(0)).unwrap();
/// assert_eq!(p.layout, Layout::Padded { left: true, multiple_of: Some(8) });
/// // A padded batch needs a pad token; a flattened one has no padding.
/// assert!(Padding::new(false, PaddingSide::Right, None, None).is_err());
/// assert_eq!(Padding::new(true, PaddingSide::Right, None, None).unwrap().pad_token_id, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Padded `[B, L]` or flattened `[1, T]`.
    pub layout: Layout,
    /// The id written into padding positions (never compared with ids: padding is masked by
    /// position).
    pub pad_token_id: i64,
}

impl Padding {
    /// Checks and combines the padding options.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a padded layout without a pad token, or a
    /// `pad_to_multiple_of` of 0.
    pub fn new(
        padding_free: bool,
        side: PaddingSide,
        pad_to_multiple_of: Option<usize>,
        pad_token_id: Option<i64>,
    ) -> Result<Self> {
        if pad_to_multiple_of == Some(0) {
            return Err(Error::InvalidArgument("pad_to_multiple_of must be positive".into()));
        }
        if padding_free {
            // A flattened batch has no padding; the id is never written.
            return Ok(Padding {
                layout: Layout::Flat,
                pad_token_id: pad_token_id.unwrap_or(0),
            });
        }
        let pad_token_id = pad_token_id.ok_or_else(|| {
            Error::InvalidArgument(
                "padding needs a pad token id, and the tokenizer has none. Fix it with \
                 sftmask.ensure_pad_token(tokenizer, model) (reuses a reserved token such as Llama-3's \
                 <|finetune_right_pad_id|>), or pass pad_token_id=…, or use padding_free=True"
                    .into(),
            )
        })?;
        Ok(Padding {
            layout: Layout::Padded {
                left: side == PaddingSide::Left,
                multiple_of: pad_to_multiple_of,
            },
            pad_token_id,
        })
    }
}
