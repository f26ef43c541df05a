//! Mount options: whatever parses prints back to the same options, and no
//! input makes the parser panic.

use std::path::PathBuf;

use proptest::prelude::*;
use strata_overlaydiff::options::{self, MountOptions, XattrNamespace};

fn path() -> impl Strategy<Value = PathBuf> {
    "/[a-z:,\\\\= ._-]{1,20}".prop_map(PathBuf::from)
}

proptest! {
    #[test]
    fn printed_options_parse_back(
        lowers in prop::collection::vec(path(), 1..5),
        upper in prop::option::of(path()),
        work in prop::option::of(path()),
        user in any::<bool>(),
        redirect in any::<bool>(),
        metacopy in any::<bool>(),
        index in prop::option::of(prop_oneof![Just("index=on"), Just("index=off")]),
    ) {
        let opts = MountOptions {
            lowers,
            upper,
            work,
            xattrs: if user { XattrNamespace::User } else { XattrNamespace::Trusted },
            redirect_dir: redirect,
            metacopy,
            other: index.map(|i| vec![i.to_string()]).unwrap_or_default(),
        };
        prop_assert_eq!(options::parse(&opts.to_string()).expect("printed options parse"), opts);
    }

    #[test]
    fn any_text_parses_or_fails_cleanly(text in "\\PC{0,200}") {
        if let Ok(o) = options::parse(&text) {
            prop_assert!(!o.lowers.is_empty());
            prop_assert_eq!(options::parse(&o.to_string()).expect("reparse"), o);
        }
    }
}
