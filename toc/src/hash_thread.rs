//! SHA-256 of a stream, computed on a thread of its own: the converter's
//! reading thread is its bottleneck, and hashing the whole tar and the whole
//! blob there cost it a third of its time.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest, Sha256};

const PIECE: usize = 1 << 20;

pub(crate) struct HashThread<'scope> {
    buf: Vec<u8>,
    to_hash: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    hasher: ScopedJoinHandle<'scope, [u8; 32]>,
    len: u64,
}

impl<'scope> HashThread<'scope> {
    pub(crate) fn spawn<'env>(scope: &'scope Scope<'scope, 'env>) -> Self {
        let (to_hash, pieces) = sync_channel::<Vec<u8>>(4);
        let (give_back, spare) = sync_channel::<Vec<u8>>(6);
        let hasher = scope.spawn(move || {
            let mut h = Sha256::new();
            for mut piece in pieces {
                h.update(&piece);
                piece.clear();
                let _ = give_back.try_send(piece);
            }
            h.finalize().into()
        });
        HashThread {
            buf: Vec::with_capacity(PIECE),
            to_hash: Some(to_hash),
            spare,
            hasher,
            len: 0,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(PIECE));
        let piece = std::mem::replace(&mut self.buf, next);
        self.to_hash
            .as_ref()
            .expect("open")
            .send(piece)
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// The digest and length of everything written.
    pub(crate) fn finish(mut self) -> io::Result<([u8; 32], u64)> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        drop(self.to_hash.take());
        let digest = self
            .hasher
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        Ok((digest, self.len))
    }
}

impl Write for HashThread<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rest.len().min(PIECE - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == PIECE {
                self.send()?;
            }
        }
        self.len += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_as_inline() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let (digest, len) = std::thread::scope(|s| {
            let mut h = HashThread::spawn(s);
            for piece in data.chunks(77_777) {
                h.write_all(piece).expect("write");
            }
            h.finish().expect("finish")
        });
        assert_eq!(len, data.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
