//! Structured Services, EndpointSlices and Nodes as event sequences: see
//! `socklb_core::fuzzing::event_sequence`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklb_core::fuzzing::event_sequence(data));
