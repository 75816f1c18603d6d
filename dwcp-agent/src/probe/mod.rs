//! Link probing, the I/O half: the sender that puts a probe request on every underlay link at
//! a fixed interval, and the monitor task that reads the kernel's per-link measurements
//! (`LINK_STATE`, filled by the underlay XDP program from the reflected replies) and turns
//! them, through `dwcp_control::liveness`, into link events for the state owner.
//!
//! The kernel decides liveness on its own (a next hop whose link has not answered for
//! `detect_ns` is skipped without waiting for us); the monitor applies the same rule to the
//! same map values so the agent's view agrees with what the fast path does.

mod monitor;
mod sender;

pub use dwcp_control::liveness::*;
pub use monitor::LinkMonitor;
pub use sender::{
    open_probe_socket, ProbeHandle, ProbeLink, ProbeSender, SenderConfig, SenderError,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, so the probe's `tx_ns`
/// and the kernel's `last_reply_ns` can be compared with it directly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
    }
}
