//! A single 512-byte header block, decoded with the rules of Go's
//! `archive/tar` reader (the one tar-split forks), so that names, sizes and
//! errors come out the same.

use super::numbers::{c_string, parse_numeric, parse_octal};

pub(crate) const BLOCK: usize = 512;
pub(crate) type Block = [u8; BLOCK];
pub(crate) static ZERO_BLOCK: Block = [0; BLOCK];

pub(crate) const TYPE_REG_A: u8 = 0;
pub(crate) const TYPE_REG: u8 = b'0';
pub(crate) const TYPE_DIR: u8 = b'5';
pub(crate) const TYPE_PAX: u8 = b'x';
pub(crate) const TYPE_PAX_GLOBAL: u8 = b'g';
pub(crate) const TYPE_GNU_LONG_NAME: u8 = b'L';
pub(crate) const TYPE_GNU_LONG_LINK: u8 = b'K';
pub(crate) const TYPE_GNU_SPARSE: u8 = b'S';

/// Bytes of padding that follow `size` bytes of data.
pub(crate) fn padding(size: u64) -> u64 {
    size.wrapping_neg() % BLOCK as u64
}

/// Entry types that never carry a data area, whatever their size field says.
pub(crate) fn is_header_only(typeflag: u8) -> bool {
    matches!(typeflag, b'1'..=b'6')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    V7,
    /// USTAR or PAX (the magic does not tell them apart).
    Ustar,
    Star,
    Gnu,
}

/// Why a header block was rejected.
pub(crate) type Reason = &'static str;

/// What strata needs from one header block.
#[derive(Debug)]
pub(crate) struct Header {
    pub typeflag: u8,
    /// The name field, with the USTAR/STAR prefix applied.
    pub name: Vec<u8>,
    pub size: i64,
    pub format: Format,
}

fn field(block: &Block, start: usize, len: usize) -> &[u8] {
    &block[start..start + len]
}

/// The format a block claims, after verifying its checksum.
pub(crate) fn format_of(block: &Block) -> Result<Format, Reason> {
    let stored = parse_octal(field(block, 148, 8)).ok_or("checksum field is not octal")?;
    let (unsigned, signed) = checksums(block);
    if stored != unsigned && stored != signed {
        return Err("header checksum mismatch");
    }
    let magic = field(block, 257, 6);
    let version = field(block, 263, 2);
    let trailer = field(block, 508, 4);
    Ok(if magic == b"ustar\0" && trailer == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

/// The unsigned and signed byte sums of a header, with the checksum field
/// counted as spaces; historic tars used either.
///
/// Summed over the whole block and then corrected for the checksum field,
/// so the loops have no branch and vectorize: every header of a layer is
/// checked, on each pass over it.
fn checksums(block: &Block) -> (i64, i64) {
    // A byte read as signed is 256 less when its high bit is set.
    // In 16-bit lanes, 128 bytes at a time (128 * 255 fits).
    let sum_and_high = |bytes: &[u8]| {
        let (mut sum, mut high) = (0i64, 0i64);
        for part in bytes.chunks(128) {
            sum += i64::from(part.iter().fold(0u16, |s, &b| s + u16::from(b)));
            high += i64::from(part.iter().fold(0u16, |s, &b| s + u16::from(b >> 7)));
        }
        (sum, high)
    };
    let (all, all_high) = sum_and_high(block);
    let (field, field_high) = sum_and_high(&block[148..156]);
    let unsigned = all - field + 8 * i64::from(b' ');
    let signed = unsigned - 256 * (all_high - field_high);
    (unsigned, signed)
}

/// Decodes a non-zero header block.
pub(crate) fn parse(block: &Block) -> Result<Header, Reason> {
    let format = format_of(block)?;
    let bad = "numeric field is not a valid number";
    let typeflag = block[156];
    let mut name = c_string(field(block, 0, 100)).to_vec();
    let size = parse_numeric(field(block, 124, 12)).ok_or("size field is not a valid number")?;
    for (start, len) in [(100, 8), (108, 8), (116, 8), (136, 12)] {
        parse_numeric(field(block, start, len)).ok_or(bad)?;
    }
    if format != Format::V7 {
        parse_numeric(field(block, 329, 8)).ok_or(bad)?;
        parse_numeric(field(block, 337, 8)).ok_or(bad)?;
        let prefix: &[u8] = match format {
            Format::Ustar => c_string(field(block, 345, 155)),
            Format::Star => {
                parse_numeric(field(block, 476, 12)).ok_or(bad)?;
                parse_numeric(field(block, 488, 12)).ok_or(bad)?;
                c_string(field(block, 345, 131))
            }
            Format::Gnu => {
                // Go before 1.8 wrote a USTAR prefix into GNU headers, over the
                // atime and ctime fields. When those do not parse as numbers,
                // Go's reader takes an ASCII prefix from there, and so must we.
                let time_ok =
                    |start| block[start] == 0 || parse_numeric(field(block, start, 12)).is_some();
                if time_ok(345) && time_ok(357) {
                    &[]
                } else {
                    let prefix = c_string(field(block, 345, 155));
                    if prefix.is_ascii() { prefix } else { &[] }
                }
            }
            Format::V7 => &[],
        };
        if !prefix.is_empty() {
            let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
            full.extend_from_slice(prefix);
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    Ok(Header {
        typeflag,
        name,
        size,
        format,
    })
}

/// The logical size of an old-GNU sparse file.
pub(crate) fn gnu_real_size(block: &Block) -> Option<i64> {
    parse_numeric(field(block, 483, 12))
}

/// Sparse map entries of an old-GNU header (`main == true`, 4 entries at 386)
/// or of an extension block (21 entries at 0). Returns the entries and
/// whether another extension block follows.
pub(crate) fn gnu_sparse_entries(
    block: &Block,
    main: bool,
) -> Result<(Vec<(i64, i64)>, bool), Reason> {
    let (start, count, extended_at) = if main { (386, 4, 482) } else { (0, 21, 504) };
    let mut entries = Vec::new();
    for i in 0..count {
        let at = start + i * 24;
        if block[at] == 0 {
            break;
        }
        let offset =
            parse_numeric(field(block, at, 12)).ok_or("sparse offset is not a valid number")?;
        let length = parse_numeric(field(block, at + 12, 12))
            .ok_or("sparse length is not a valid number")?;
        entries.push((offset, length));
    }
    Ok((entries, block[extended_at] > 0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The checksums as the format defines them, byte by byte.
    fn checksums_by_definition(block: &Block) -> (i64, i64) {
        let mut unsigned: i64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += i64::from(b);
            signed += i64::from(b as i8);
        }
        (unsigned, signed)
    }

    proptest::proptest! {
        #[test]
        fn checksums_are_the_defined_sums(bytes in proptest::collection::vec(proptest::num::u8::ANY, BLOCK), high in proptest::bool::ANY) {
            let mut block = [0u8; BLOCK];
            block.copy_from_slice(&bytes);
            if high {
                // Mostly high bytes, where the two sums differ most.
                block.iter_mut().for_each(|b| *b |= 0x80);
            }
            proptest::prop_assert_eq!(checksums(&block), checksums_by_definition(&block));
        }
    }

    #[test]
    fn checksums_of_extreme_blocks() {
        for fill in [0u8, 0x7f, 0x80, 0xff] {
            let block = [fill; BLOCK];
            assert_eq!(checksums(&block), checksums_by_definition(&block), "{fill:#x}");
        }
    }

    /// A USTAR header with a valid checksum, for tests.
    pub(crate) fn ustar_block(name: &[u8], typeflag: u8, size: u64) -> Block {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name);
        b[100..108].copy_from_slice(b"0000644\0");
        b[108..116].copy_from_slice(b"0000000\0");
        b[116..124].copy_from_slice(b"0000000\0");
        b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        b[136..148].copy_from_slice(b"14524770400\0");
        b[156] = typeflag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        fix_checksum(&mut b);
        b
    }

    pub(crate) fn fix_checksum(b: &mut Block) {
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn padding_values() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }

    #[test]
    fn parses_ustar_with_prefix() {
        let mut b = ustar_block(b"file", TYPE_REG, 6);
        b[345..348].copy_from_slice(b"dir");
        fix_checksum(&mut b);
        let h = parse(&b).expect("valid header");
        assert_eq!(h.name, b"dir/file");
        assert_eq!(h.size, 6);
        assert_eq!(h.format, Format::Ustar);
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut b = ustar_block(b"file", TYPE_REG, 6);
        b[0] = b'g';
        assert_eq!(parse(&b).err(), Some("header checksum mismatch"));
    }

    #[test]
    fn rejects_bad_size() {
        let mut b = ustar_block(b"file", TYPE_REG, 6);
        b[124..136].copy_from_slice(b"0000000009x\0");
        fix_checksum(&mut b);
        assert!(parse(&b).is_err());
    }
}
