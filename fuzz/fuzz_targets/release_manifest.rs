//! Fuzz target `release_manifest`: see [`cocoon_fuzz::release_manifest`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::release_manifest(data));
