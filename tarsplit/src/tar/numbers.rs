//! Number parsing with the exact acceptance rules of Go's `strconv` and
//! `archive/tar`, so that strata accepts and rejects the same headers as
//! tar-split does.

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional sign, then one or more
/// ASCII digits, no overflow.
pub(crate) fn parse_go_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(c - b'0'))?;
    }
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// The bytes of a NUL-terminated field, up to the first NUL.
pub(crate) fn c_string(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// An octal header field. Leading and trailing spaces and NULs are ignored;
/// an empty field is zero.
pub(crate) fn parse_octal(field: &[u8]) -> Option<i64> {
    let start = field.iter().position(|&b| b != b' ' && b != 0);
    let Some(start) = start else { return Some(0) };
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(start, |e| e + 1);
    let digits = c_string(&field[start..end]);
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
    }
    // Go converts with int64(x): values above i64::MAX wrap to negative and
    // are rejected later where a negative value is invalid.
    Some(value as i64)
}

/// A numeric header field: octal, or GNU base-256 when the high bit of the
/// first byte is set.
pub(crate) fn parse_numeric(field: &[u8]) -> Option<i64> {
    let Some(&first) = field.first() else {
        return Some(0);
    };
    if first & 0x80 == 0 {
        return parse_octal(field);
    }
    let invert: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut value: u64 = 0;
    for (i, &byte) in field.iter().enumerate() {
        let mut c = byte ^ invert;
        if i == 0 {
            c &= 0x7f;
        }
        if value >> 56 > 0 {
            return None;
        }
        value = (value << 8) | u64::from(c);
    }
    if value >> 63 > 0 {
        return None;
    }
    if invert == 0xff {
        Some(!(value as i64))
    } else {
        Some(value as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_int() {
        assert_eq!(parse_go_int(b"12"), Some(12));
        assert_eq!(parse_go_int(b"+12"), Some(12));
        assert_eq!(parse_go_int(b"-12"), Some(-12));
        assert_eq!(parse_go_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_go_int(b"9223372036854775808"), None);
        assert_eq!(parse_go_int(b""), None);
        assert_eq!(parse_go_int(b"-"), None);
        assert_eq!(parse_go_int(b"1_0"), None);
        assert_eq!(parse_go_int(b" 1"), None);
    }

    #[test]
    fn octal() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"6 4"), None);
        assert_eq!(parse_octal(b"648"), None);
        assert_eq!(parse_octal(b"64\x0012"), Some(0o64));
    }

    #[test]
    fn base256() {
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
        let mut too_big = [0u8; 12];
        too_big[0] = 0x80;
        too_big[3] = 1;
        assert_eq!(parse_numeric(&too_big), None);
    }
}
