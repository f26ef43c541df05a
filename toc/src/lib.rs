#![doc = include_str!("../README.md")]

pub mod annotations;
mod canonical;
pub mod chunker;
mod consistency;
mod error;
mod frames;
mod hash_thread;
pub mod estargz;
mod estargz_writer;
pub mod footer;
pub mod nydus;
mod read_at;
mod toc;
mod writer;
mod zstd_chunked;

pub use consistency::{describes, describes_to_the_second, toc_time};
pub use error::{Error, Result};
pub use read_at::ReadAt;
pub use toc::{EMPTY_DIGEST, Entry, Piece, Toc, TocHeader, TocItem, stream_items};
pub use writer::{WriteOptions, Written, write_zstd_chunked};
pub use zstd_chunked::{ChunkedToc, ChunkedTocInfo, MAX_TAR_SPLIT, MAX_TOC, TarSplit, read_tar_split, read_zstd_chunked, read_zstd_chunked_toc_with, read_zstd_chunked_with};
