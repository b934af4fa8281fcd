//! Placeholder library target: lb-userspace lists lb-ebpf as a build-dependency so that
//! edits here rebuild the embedded object; a build-dependency needs a library target.
//! The kernel programs are the `lb-ebpf` binary (src/main.rs).
#![no_std]
