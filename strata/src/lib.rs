#![doc = include_str!("../README.md")]

mod error;
mod export;
mod pull;
mod push;
mod source;
mod stored;

pub use error::{Error, Result};
pub use export::{ExportOptions, ExportReport, ExportedLayer, LayerCompression, TransferEvent, TransferProgress, export_to_layout};
pub use pull::{DEDUP_INDEX, How, LayerReport, Progress, PullEvent, PullOptions, PullReport, TAR_HEADERS, pull};
pub use push::{PushOptions, PushReport, push};
pub use stored::{BlobKind, GZIPPED_EMPTY_LAYER, GZIPPED_EMPTY_LAYER_DIGEST, LayerInfo, StoredImage};

pub use strata_chunkfetch as chunkfetch;
pub use strata_dedup_cache as dedup_cache;
pub use strata_fsverity as fsverity;
pub use strata_layerstore as layerstore;
pub use strata_tarsplit as tarsplit;
pub use strata_toc as toc;
