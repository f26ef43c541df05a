//! The kernel side: `FS_IOC_ENABLE_VERITY` and `FS_IOC_MEASURE_VERITY`.

// rustix's ioctl entry point is unsafe because the caller vouches for the
// argument's layout; the two structs below are the kernel's UAPI layouts
// (include/uapi/linux/fsverity.h) and their opcodes are built from them.
#![allow(unsafe_code)]

use std::os::fd::AsFd;

use rustix::io::Errno;
use rustix::ioctl::{Setter, Updater, ioctl, opcode};

use crate::digest::{ALG_SHA256, Digest, Params};

/// Why enabling or measuring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The filesystem or kernel cannot do fs-verity (`ENOTTY`: the
    /// filesystem has no fs-verity; `EOPNOTSUPP`: kernel built without
    /// `CONFIG_FS_VERITY`, or the filesystem lacks the `verity` feature).
    #[error("fs-verity is not supported here ({0})")]
    NotSupported(std::io::Error),
    /// The file does not have fs-verity enabled (`ENODATA` from measure).
    #[error("fs-verity is not enabled on this file")]
    NotEnabled,
    /// The file is open for writing somewhere (`ETXTBSY`).
    #[error("the file is open for writing")]
    OpenForWriting,
    #[error("unexpected digest algorithm {0} (only SHA-256 is supported)")]
    Algorithm(u16),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn is_not_supported(&self) -> bool {
        matches!(self, Error::NotSupported(_))
    }
}

fn classify(errno: Errno) -> Error {
    let io = std::io::Error::from(errno);
    match errno {
        Errno::NOTTY | Errno::OPNOTSUPP => Error::NotSupported(io),
        Errno::NODATA => Error::NotEnabled,
        Errno::TXTBSY => Error::OpenForWriting,
        _ => Error::Io(io),
    }
}

/// `struct fsverity_enable_arg`.
#[repr(C)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// `struct fsverity_digest` with room for the largest digest.
#[repr(C)]
struct DigestArg {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; 64],
}

const ENABLE_VERITY: rustix::ioctl::Opcode = opcode::write::<EnableArg>(b'f', 133);
/// The kernel declares the ioctl with the 4-byte header only; the digest
/// buffer follows it.
const MEASURE_VERITY: rustix::ioctl::Opcode = opcode::read_write::<[u16; 2]>(b'f', 134);

/// Enables fs-verity on a file with default parameters (SHA-256, 4096-byte
/// blocks, no salt), as containers-storage does. The file must be open
/// read-only, with no writable descriptor open anywhere. A file that already
/// has fs-verity is not an error.
pub fn enable<Fd: AsFd>(file: Fd) -> Result<(), Error> {
    enable_with(file, &Params::default())
}

/// Enables fs-verity with the given parameters.
pub fn enable_with<Fd: AsFd>(file: Fd, params: &Params) -> Result<(), Error> {
    let salt = params.salt();
    let arg = EnableArg {
        version: 1,
        hash_algorithm: u32::from(ALG_SHA256),
        block_size: params.block_size() as u32,
        salt_size: salt.len() as u32,
        salt_ptr: if salt.is_empty() {
            0
        } else {
            salt.as_ptr() as u64
        },
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: `arg` has the kernel's layout for this opcode, and `salt`
    // outlives the call.
    match unsafe { ioctl(file.as_fd(), Setter::<ENABLE_VERITY, EnableArg>::new(arg)) } {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(classify(e)),
    }
}

/// The fs-verity digest the kernel holds for a file.
pub fn measure<Fd: AsFd>(file: Fd) -> Result<Digest, Error> {
    let mut arg = DigestArg {
        digest_algorithm: 0,
        digest_size: 64,
        digest: [0; 64],
    };
    // SAFETY: `arg` is the header the opcode declares followed by a
    // `digest_size`-byte buffer, which is what the kernel writes to.
    unsafe {
        ioctl(
            file.as_fd(),
            Updater::<MEASURE_VERITY, DigestArg>::new(&mut arg),
        )
    }
    .map_err(classify)?;
    if arg.digest_algorithm != u16::from(ALG_SHA256) || arg.digest_size != 32 {
        return Err(Error::Algorithm(arg.digest_algorithm));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&arg.digest[..32]);
    Ok(Digest(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<EnableArg>(), 128);
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        ))]
        {
            assert_eq!(ENABLE_VERITY, 0x4080_6685);
            assert_eq!(MEASURE_VERITY, 0xc004_6686);
        }
    }
}
