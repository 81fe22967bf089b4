//! Fuzz target `mux_billing`: see [`cocoon_fuzz::mux_billing`] for the moves and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::mux_billing(data));
