#![doc = include_str!("../README.md")]

mod digest;
mod kernel;
mod policy;

pub use digest::{Digest, Hasher, Params, ParamsError, ParseDigestError, digest, digest_with};
pub use kernel::{Error, enable, enable_with, measure};
pub use policy::Policy;
