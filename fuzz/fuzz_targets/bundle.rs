//! A bundle file (or a stream of one from a master): the tar reader, the
//! manifest, every member checked against it.
#![no_main]

use hakube::bundle::{self, BundleError, Discard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = std::path::Path::new("fuzz.bundle");
    let _ = bundle::read::<_, Discard, BundleError>(name, data, None, |_head| Ok(Some(Discard)), |_| {});
});
