//! Fuzz target `initramfs`: see [`cocoon_fuzz::initramfs`] for what it feeds where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cocoon_fuzz::initramfs(data));
