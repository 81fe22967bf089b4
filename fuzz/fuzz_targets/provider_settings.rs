//! Fuzz target `provider_settings`: see [`cocoon_fuzz::provider_settings`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::provider_settings(data));
