//! The channel fetched pieces take to the assembly, bounded in bytes.
//!
//! A bound in messages would not do: a piece is one message whatever its
//! size, so a bound loose enough for a run of small files would let large
//! ones fill memory, and one tight enough for large files keeps the fetch
//! from running ahead over small ones. The fetch must run ahead: while the
//! assembly copies files reused from local layers, it has nothing to wait
//! for, and without a lead the assembly waits for every fetched file.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Decompressed piece bytes on their way to the assembly, or why they
/// will not come.
pub type PieceMessage = std::result::Result<Vec<u8>, String>;

/// A channel of at most `max_bytes` of piece bytes in flight (and one
/// piece more, however large: a piece never waits for room it cannot get).
pub fn piece_channel(max_bytes: usize) -> (PieceSender, PieceReceiver) {
    let (tx, rx) = mpsc::channel();
    let room = Arc::new(Room {
        state: Mutex::new(RoomState::default()),
        freed: Condvar::new(),
        max: max_bytes,
    });
    (PieceSender { tx, room: room.clone() }, PieceReceiver { rx, room })
}

#[derive(Default)]
struct RoomState {
    in_flight: usize,
    receiver_gone: bool,
}

struct Room {
    state: Mutex<RoomState>,
    freed: Condvar,
    max: usize,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fetch's end.
pub struct PieceSender {
    tx: Sender<PieceMessage>,
    room: Arc<Room>,
}

/// The receiver is gone: the fetch can stop.
#[derive(Debug)]
pub struct Disconnected;

impl std::fmt::Debug for PieceSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceSender").field("max_bytes", &self.room.max).finish()
    }
}

impl std::fmt::Debug for PieceReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceReceiver").field("max_bytes", &self.room.max).finish()
    }
}

impl PieceSender {
    /// Sends `message`, first waiting while the bytes in flight would pass
    /// the bound with it.
    pub fn send(&self, message: PieceMessage) -> Result<(), Disconnected> {
        let len = message.as_ref().map_or(0, Vec::len);
        let mut state = self.room.lock();
        while state.in_flight > 0 && state.in_flight + len > self.room.max && !state.receiver_gone {
            state = self.room.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.receiver_gone {
            return Err(Disconnected);
        }
        state.in_flight += len;
        drop(state);
        self.tx.send(message).map_err(|_| Disconnected)
    }
}

/// The assembly's end.
pub struct PieceReceiver {
    rx: Receiver<PieceMessage>,
    room: Arc<Room>,
}

impl PieceReceiver {
    /// The next message; `None` once the sender is gone and all is read.
    pub fn recv(&self) -> Option<PieceMessage> {
        let message = self.rx.recv().ok()?;
        let len = message.as_ref().map_or(0, Vec::len);
        if len > 0 {
            let mut state = self.room.lock();
            state.in_flight -= len;
            drop(state);
            self.room.freed.notify_one();
        }
        Some(message)
    }
}

impl Drop for PieceReceiver {
    fn drop(&mut self) {
        self.room.lock().receiver_gone = true;
        self.room.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_waits_for_room_and_a_large_piece_still_passes() {
        let (tx, rx) = piece_channel(10);
        std::thread::scope(|s| {
            let sender = s.spawn(move || {
                for len in [4, 4, 4, 30, 1] {
                    tx.send(Ok(vec![7; len])).expect("send");
                }
            });
            let mut lens = Vec::new();
            while let Some(message) = rx.recv() {
                lens.push(message.expect("piece").len());
            }
            sender.join().expect("join");
            assert_eq!(lens, [4, 4, 4, 30, 1]);
        });
    }

    #[test]
    fn the_bound_holds() {
        let (tx, rx) = piece_channel(10);
        tx.send(Ok(vec![0; 6])).expect("send");
        let waiting = std::thread::scope(|s| {
            let sender = s.spawn(|| tx.send(Ok(vec![0; 6])));
            std::thread::sleep(std::time::Duration::from_millis(50));
            let waiting = !sender.is_finished();
            rx.recv().expect("first").expect("a piece");
            sender.join().expect("join").expect("second");
            waiting
        });
        assert!(waiting, "6 + 6 bytes went in flight under a bound of 10");
    }

    #[test]
    fn a_waiting_sender_learns_the_receiver_is_gone() {
        let (tx, rx) = piece_channel(4);
        tx.send(Ok(vec![0; 4])).expect("send");
        std::thread::scope(|s| {
            let sender = s.spawn(|| tx.send(Ok(vec![0; 4])));
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(rx);
            assert!(sender.join().expect("join").is_err());
        });
    }
}
