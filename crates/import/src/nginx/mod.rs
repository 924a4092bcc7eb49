//! nginx: the configuration syntax, and its conversion.

mod convert;
mod parse;

pub use convert::{convert, Conversion, Unconverted};
pub use parse::{load, parse_text, Directive, ParseError};
