//! The server's CPU time, RSS and open descriptors, read from /proc/PID.

use std::fs;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime in seconds.
    pub cpu_s: f64,
    pub rss_kb: u64,
    pub fds: u64,
}

/// Reads one sample; `None` when the process is gone (or /proc is unreadable).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_s = cpu_seconds(&stat)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = vm_rss_kb(&status)?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Some(Sample { cpu_s, rss_kb, fds })
}

/// The sum of `sample` over `pids`; `None` if any is gone (or `pids` is empty).
pub fn sample_all(pids: &[u32]) -> Option<Sample> {
    let mut sum = Sample { cpu_s: 0.0, rss_kb: 0, fds: 0 };
    for &pid in pids {
        let s = sample(pid)?;
        sum.cpu_s += s.cpu_s;
        sum.rss_kb += s.rss_kb;
        sum.fds += s.fds;
    }
    (!pids.is_empty()).then_some(sum)
}

/// Whether process `pid` holds a TCP socket listening on `port` (any address, IPv4 or
/// IPv6); `None` when that cannot be told (its descriptors are not ours to read).
pub fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is field 9.
            let listening = f.get(3) == Some(&"0A");
            let local_port =
                f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let held = fds.flatten().filter_map(|e| fs::read_link(e.path()).ok()).any(|l| {
        let l = l.to_string_lossy();
        inodes.iter().any(|i| *i == l)
    });
    Some(held)
}

/// The first sample of a run; an error if a `--pid` was given that cannot be read.
pub fn sample_start(pids: &[u32]) -> std::io::Result<Option<Sample>> {
    let s = sample_all(pids);
    if !pids.is_empty() && s.is_none() {
        return Err(std::io::Error::other(format!("--pid {pids:?}: no such process (or /proc unreadable)")));
    }
    Ok(s)
}

/// This process's user + system CPU seconds so far.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime (fields 14 and 15) from a /proc/PID/stat line, in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}

fn vm_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (chat loop) S 1 1234 1234 0 -1 4194560 300 0 0 0 250 50 0 0 20 0 1 0 100 1000 200";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_seconds(stat), Some(300.0 / hz));
        assert_eq!(vm_rss_kb("Name:\tx\nVmRSS:\t  5120 kB\n"), Some(5120));
        // A sleeping child's RSS stays put (this process's moves with the other test threads).
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(50)); // past exec
        let one = sample(pid).unwrap();
        let two = sample_all(&[pid, pid]).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(one.rss_kb > 0);
        assert_eq!(two.rss_kb, 2 * one.rss_kb, "twice the same process");
        assert!(sample_all(&[]).is_none());
    }
}
