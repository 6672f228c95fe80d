//! Whole-image operations over any format and chain: convert, compare, commit.
