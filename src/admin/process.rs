//! The process's own numbers, read from `/proc` at each scrape: resident
//! memory, CPU time, open file descriptors and start time, under the names
//! every Prometheus client library uses (`process_...`). Linux only; elsewhere
//! there are none.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    /// Unix seconds.
    pub start_time: f64,
}

impl ProcessStats {
    /// None when `/proc` cannot be read.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        parse(
            &stat,
            &statm,
            &boot,
            ticks as f64,
            page.max(0) as u64,
            open_fds,
        )
    }

    pub fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let g = |e: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
        };
        g(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident_bytes as f64,
        )?;
        let c = ConstCounter::new(self.cpu_seconds);
        c.encode(e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            None,
            c.metric_type(),
        )?)?;
        g(
            e,
            "process_open_fds",
            "Open file descriptors",
            self.open_fds as f64,
        )?;
        g(
            e,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            self.start_time,
        )
    }
}

/// From the texts of `/proc/self/stat`, `/proc/self/statm` and `/proc/stat`.
fn parse(
    stat: &str,
    statm: &str,
    boot: &str,
    ticks: f64,
    page: u64,
    open_fds: u64,
) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields are counted after its closing one; field 3 is first there.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let btime: f64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    if ticks <= 0.0 {
        return None;
    }
    Some(ProcessStats {
        resident_bytes: rss_pages * page,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
        start_time: btime + start / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_texts_with_a_space_in_the_command_name() {
        let stat = "4242 (tern (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 1000000 500 18446744073709551615";
        let p = parse(
            stat,
            "2500 500 100 1 0 300 0",
            "cpu 1 2\nbtime 1700000000\n",
            100.0,
            4096,
            7,
        )
        .expect("parsed");
        assert_eq!(p.resident_bytes, 500 * 4096);
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9);
        assert!((p.start_time - 1_700_000_010.0).abs() < 1e-9);
        assert_eq!(p.open_fds, 7);
        assert!(ProcessStats::read().is_some_and(|p| p.resident_bytes > 0));
    }
}
