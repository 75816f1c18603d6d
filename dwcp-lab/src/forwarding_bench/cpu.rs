//! Where the gateway's forwarding runs and how much CPU it takes.
//!
//! A veth has one receive queue, so one NAPI context does all of a gateway's forwarding. With
//! threaded NAPI (`/sys/class/net/DEV/threaded`) that context is a kernel thread
//! `napi/<dev>-<napi id>`: it can be pinned to a CPU of its own, and its run time
//! (`/proc/<pid>/schedstat`, in ns, not tick-sampled) is the CPU the forwarding took. Its
//! wait time (runnable, but the CPU was taken) tells whether it ever ran out of work.

use super::{BenchError, Result};
use crate::netlab::Netns;

/// Longest task name the kernel keeps (`TASK_COMM_LEN` - 1).
const COMM_MAX: usize = 15;

/// Turns on threaded NAPI for `ifname` in `ns`.
pub fn enable_threaded_napi(ns: &Netns, ifname: &str) -> Result<()> {
    let path = format!("/sys/class/net/{ifname}/threaded");
    ns.exec(&["sh", "-c", &format!("echo 1 > {path}")])?;
    Ok(())
}

/// The task name prefix of `ifname`'s NAPI threads, as the kernel truncates it.
fn napi_comm_prefix(ifname: &str) -> String {
    let full = format!("napi/{ifname}-");
    full.chars().take(COMM_MAX).collect()
}

/// Whether a task name is one of `ifname`'s NAPI threads.
pub fn is_napi_thread_of(comm: &str, ifname: &str) -> bool {
    comm.trim_end().starts_with(&napi_comm_prefix(ifname))
}

/// The pid of `ifname`'s NAPI thread. Interface names are global in this search (task names
/// carry no namespace), so callers give their interfaces names no one else uses.
pub fn napi_thread(ifname: &str) -> Result<u32> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir("/proc").map_err(|source| BenchError::Io {
        what: "listing /proc".into(),
        source,
    })?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Tasks come and go while we look: a vanished one is simply not ours.
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            if is_napi_thread_of(&comm, ifname) {
                found.push(pid);
            }
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => Err(BenchError::NapiThread {
            ifname: ifname.into(),
            detail: "no such thread (is threaded NAPI on, and NAPI enabled on the veth?)".into(),
        }),
        many => Err(BenchError::NapiThread {
            ifname: ifname.into(),
            detail: format!("{} threads match: {many:?}", many.len()),
        }),
    }
}

/// A task's scheduler clocks so far, ns (`/proc/<pid>/schedstat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedTimes {
    /// On a CPU.
    pub run_ns: u64,
    /// Runnable, waiting for a CPU (taken by something else).
    pub wait_ns: u64,
}

/// Task `pid`'s scheduler clocks.
pub fn sched_times(pid: u32) -> Result<SchedTimes> {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        what: path.clone(),
        source,
    })?;
    parse_schedstat(&text).ok_or(BenchError::Parse { what: path, text })
}

/// A `schedstat` line: `<run ns> <wait ns> <timeslices>`.
pub fn parse_schedstat(text: &str) -> Option<SchedTimes> {
    let mut f = text.split_whitespace().map(|w| w.parse::<u64>());
    Some(SchedTimes {
        run_ns: f.next()?.ok()?,
        wait_ns: f.next()?.ok()?,
    })
}

/// Binds task `pid` (0 = the calling thread) to `cpu`.
pub fn pin_to_cpu(pid: u32, cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(BenchError::Io {
            what: format!("binding task {pid} to CPU {cpu}"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    // SAFETY: cpu_set_t is plain data; the libc calls only read/write the set we own.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(BenchError::Io {
            what: format!("binding task {pid} to CPU {cpu}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Real-time priorities of the benchmark's threads. On a shared machine, a NAPI thread at
/// normal priority gets only its fair share of a CPU next to other busy processes, and the
/// benchmark would measure the machine's load instead of the forwarder. `SCHED_FIFO` gives
/// them the CPU (up to the kernel's real-time limit, `sched_rt_runtime_us`, 95 % by default).
/// The sink outranks the source it shares a CPU with, so it drains its ring first; the
/// measuring thread outranks both, so its readings are taken when it asks for them.
pub mod priority {
    pub const SOURCE: i32 = 10;
    pub const GATEWAY: i32 = 20;
    pub const SINK: i32 = 30;
    pub const MEASURE: i32 = 40;
}

/// Gives task `pid` (0 = the calling thread) real-time FIFO priority `prio`.
pub fn set_fifo(pid: u32, prio: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: plain syscall with a parameter struct we own.
    let rc = unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(BenchError::Io {
            what: format!("giving task {pid} SCHED_FIFO priority {prio}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The real-time limit: the share of each period real-time tasks may use (1.0 = no limit).
pub fn rt_share() -> Option<f64> {
    let read = |p: &str| -> Option<i64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let runtime = read("/proc/sys/kernel/sched_rt_runtime_us")?;
    let period = read("/proc/sys/kernel/sched_rt_period_us")?;
    Some(if runtime < 0 {
        1.0
    } else {
        runtime as f64 / period as f64
    })
}

/// CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn napi_thread_names_match_truncated_comm() {
        assert!(is_napi_thread_of("napi/lan42-8193\n", "lan42"));
        assert!(!is_napi_thread_of("napi/lan421-8193\n", "lan42"));
        assert!(!is_napi_thread_of("napi/lan4-8193\n", "lan42"));
        // 7-digit pid: the kernel cuts the name at 15 characters, dash included.
        assert!(is_napi_thread_of("napi/lan1234567", "lan1234567"));
        assert!(!is_napi_thread_of("napi/lan1234560", "lan1234567"));
        assert!(!is_napi_thread_of("kworker/0:1", "lan42"));
    }

    #[test]
    fn schedstat_parsing() {
        assert_eq!(
            parse_schedstat("185533802 9646822 432\n"),
            Some(SchedTimes {
                run_ns: 185_533_802,
                wait_ns: 9_646_822
            })
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("1"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn fifo_priority_is_set_and_refused_when_invalid() {
        std::thread::spawn(|| {
            set_fifo(0, priority::SOURCE).unwrap();
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_FIFO);
            assert!(matches!(set_fifo(0, 1000), Err(BenchError::Io { .. })));
        })
        .join()
        .unwrap();
        let share = rt_share().unwrap();
        assert!(share > 0.0 && share <= 1.0);
    }

    #[test]
    fn own_thread_runtime_grows_and_pinning_works() {
        let pid = unsafe { libc::gettid() } as u32;
        let before = sched_times(pid).unwrap().run_ns;
        // Burn some CPU: the counter is in ns, so any work shows.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(sched_times(pid).unwrap().run_ns > before);
        pin_to_cpu(0, 0).unwrap();
        assert_eq!(unsafe { libc::sched_getcpu() }, 0);
        assert!(matches!(
            pin_to_cpu(0, online_cpus() + 1000),
            Err(BenchError::Io { .. })
        ));
    }
}
