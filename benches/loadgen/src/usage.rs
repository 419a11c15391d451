//! CPU and memory readings: the load generator's own CPU from `getrusage`,
//! the server's CPU and RSS from `/proc/<pid>`.

use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use nix::unistd::{sysconf, SysconfVar};

/// CPU consumed so far by both sides, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    client: Duration,
    server: Option<Duration>,
    machine: Option<Duration>,
}

/// CPU used between two samples, as percent of one core (2 cores = 200 %).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// Wall-clock seconds between the samples.
    pub wall_s: f64,
    /// The load generator.
    pub client_pct: f64,
    /// The server process, when its pid was given.
    pub server_pct: Option<f64>,
    /// Every CPU of the machine (all processes), from `/proc/stat`. What is
    /// neither client nor server is other work sharing the machine.
    pub machine_pct: Option<f64>,
}

impl CpuSample {
    /// Reads both sides now.
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            client: own_cpu(),
            server: server_pid.and_then(process_cpu),
            machine: machine_busy(),
        }
    }

    /// Usage from `self` to `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall;
        CpuUse {
            wall_s: wall,
            client_pct: pct(later.client.saturating_sub(self.client)),
            server_pct: match (self.server, later.server) {
                (Some(a), Some(b)) => Some(pct(b.saturating_sub(a))),
                _ => None,
            },
            machine_pct: match (self.machine, later.machine) {
                (Some(a), Some(b)) => Some(pct(b.saturating_sub(a))),
                _ => None,
            },
        }
    }
}

fn own_cpu() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

fn ticks_per_sec() -> u64 {
    sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64
}

/// Busy time of all CPUs together (user, nice, system, irq, softirq, steal).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<u64>();
    Some(Duration::from_nanos(busy * 1_000_000_000 / ticks_per_sec()))
}

/// utime + stime of `pid` from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
