//! A 10 GiB tar streams through disassembly without memory growing with it.
//! (Its own test binary: peak RSS is per process.)

use std::io::{self, Read};

use strata_tarsplit::sample::RawTar;
use strata_tarsplit::{DiscardPutter, MetadataWriter, disassemble};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("number")
}

#[test]
fn ten_gib_tar_in_bounded_memory() {
    const SIZE: u64 = 10 << 30;
    // One 10 GiB file (its size in a PAX record, beyond the octal field),
    // then a small one, then the end marker.
    let mut head = RawTar::new();
    head.pax(b'x', &[("size", SIZE.to_string().as_bytes())]);
    head.header(&strata_tarsplit::sample::Fields::new(b"huge.img", b'0', 0));
    let head = head.finish(0);
    let head = &head[..head.len() - 1024];
    let mut tail = RawTar::new();
    tail.file(b"after", b"small");
    let tail = tail.finish(0);
    let input = head.chain(io::repeat(0x5a).take(SIZE)).chain(&tail[..]);

    let before = peak_rss_kib();
    let mut metadata = MetadataWriter::new(Vec::new());
    let mut passthrough_len = CountingSink(0);
    let summary = disassemble(
        input,
        &mut passthrough_len,
        &mut metadata,
        &mut DiscardPutter,
    )
    .expect("disassemble");
    let after = peak_rss_kib();

    assert_eq!(summary.payload_size, SIZE + 5);
    assert_eq!(
        passthrough_len.0,
        head.len() as u64 + SIZE + tail.len() as u64
    );
    let metadata = metadata.finish().expect("metadata");
    assert!(
        metadata.len() < 8192,
        "metadata is {} bytes",
        metadata.len()
    );
    let grown_mib = (after.saturating_sub(before)) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB for a 10 GiB tar");
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB for a 10 GiB tar"
    );
}

struct CountingSink(u64);

impl io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
