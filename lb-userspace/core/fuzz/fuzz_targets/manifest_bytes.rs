//! Arbitrary bytes as a manifest file, through the whole core: see
//! `socklb_core::fuzzing::manifest_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklb_core::fuzzing::manifest_bytes(data));
