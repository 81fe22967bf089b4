//! Fuzz target `frame_decoder`: see [`cocoon_fuzz::frame_decoder`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::frame_decoder(data));
