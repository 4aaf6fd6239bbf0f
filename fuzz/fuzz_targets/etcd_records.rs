//! What hakube reads back from etcd, written by this or another hakube
//! (or damaged): the cluster-wide settings (read leniently), node records,
//! the purge's records, an upgrade's record, join token records. The first
//! byte picks the record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 6 {
        0 => {
            if let Ok(s) = hakube::cluster::settings::parse(bytes) {
                // A record read is one that can be written back.
                let _ = serde_json::to_vec(&s).expect("settings serialize");
            }
        }
        1 => drop(serde_json::from_slice::<hakube::cluster::registry::NodeRecord>(bytes)),
        2 => drop(serde_json::from_slice::<hakube::cluster::purge::View>(bytes)),
        3 => drop(serde_json::from_slice::<hakube::cluster::purge::Purge>(bytes)),
        4 => drop(serde_json::from_slice::<hakube::cluster::upgrade::record::Upgrade>(bytes)),
        _ => drop(serde_json::from_slice::<hakube::join::token::TokenRecord>(bytes)),
    }
});
