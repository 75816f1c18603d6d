//! What dwcp's XDP programs and the lab's benchmark programs (dwcp-lab-ebpf) share: the
//! header layouts and the bounds-checked packet access.
#![no_std]

pub mod headers;
