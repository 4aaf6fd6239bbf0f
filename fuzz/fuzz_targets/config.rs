//! The cluster config file (`/etc/hakube/cluster.yaml`, `--config FILE`):
//! parsed, merged over the defaults, validated; also as the installed
//! config a re-run merges over, where the immutable fields are checked.
#![no_main]

use hakube::config::{self, Sources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = config::parse_source(text, "fuzz.yaml") else { return };
    let name = || Ok("fuzz-host".to_owned());
    let address = || Ok("10.0.0.11".parse().unwrap());
    let flags = serde_norway::Value::Mapping(Default::default());
    let from_file = config::resolve(Sources {
        installed: None,
        file: Some((value.clone(), "fuzz.yaml".into())),
        flags: flags.clone(),
        detect_name: &name,
        detect_address: &address,
    });
    let _ = config::resolve(Sources {
        installed: Some(value),
        file: None,
        flags,
        detect_name: &name,
        detect_address: &address,
    });
    if let Ok(c) = from_file {
        // What install writes must read back as the same config.
        let written = serde_norway::to_string(&c).expect("a config serializes");
        let again = config::parse_source(&written, "written.yaml").expect("what install writes parses");
        let back = config::from_value(again, "written.yaml").expect("what install writes reads back");
        assert_eq!(back, c);
    }
});
