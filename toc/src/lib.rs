//! zstd:chunked tables of contents.

pub mod chunker;
