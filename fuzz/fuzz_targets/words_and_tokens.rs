//! The command line a join script or an operator gives: install's
//! kURL-style words and flags, join tokens, CA hashes, certificate keys,
//! and every value type they parse into. Input: NUL-separated arguments.
#![no_main]

use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut argv: Vec<OsString> = vec!["hakube".into()];
    argv.extend(text.split('\0').map(OsString::from));
    let _ = hakube::cli::parse(argv);
    for piece in text.split('\0') {
        let _ = piece.parse::<hakube::join::token::JoinToken>();
        let _ = piece.parse::<hakube::join::material::CertificateKey>();
        let _ = hakube::join::tls::check_ca_hash(piece);
        let _ = piece.parse::<hakube::config::HostPort>();
        let _ = piece.parse::<hakube::config::NodeName>();
        let _ = piece.parse::<hakube::config::Cidr>();
        let _ = piece.parse::<hakube::config::CertSan>();
        let _ = piece.parse::<hakube::config::Toleration>();
        let _ = piece.parse::<hakube::config::SnapshotInterval>();
        let _ = hakube::config::types::parse_seconds(piece);
        let _ = hakube::cli::parse_duration(piece);
    }
});
