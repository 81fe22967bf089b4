//! Fuzz target `rim`: see [`cocoon_fuzz::rim`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::rim(data));
