//! Fuzz target `gpu_evidence`: see [`cocoon_fuzz::gpu_evidence`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::gpu_evidence(data));
