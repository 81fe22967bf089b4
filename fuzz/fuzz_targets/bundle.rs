//! Fuzz target `bundle`: see [`cocoon_fuzz::bundle`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::bundle(data));
