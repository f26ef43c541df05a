//! Any text as overlay mount options: parsing never panics, and what parses
//! prints back to options that parse to the same thing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_overlaydiff::options;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = options::parse(text) {
        assert!(!parsed.lowers.is_empty());
        let again = options::parse(&parsed.to_string()).expect("printed options parse");
        assert_eq!(again, parsed);
    }
});
