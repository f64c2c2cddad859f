//! Server processes seen from the outside: CPU time and memory from /proc, the open-file
//! limit, and stopping a private Postgres together with its backends.
//!
//! Killing a Postgres handle signals the postmaster; its backends wind down on their own a
//! little later. Scenarios call [`stop_postgres`] so that none outlives the run.

use std::path::Path;

use natter_testkit::Postgres;

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// kill -9 the postmaster of `data_dir` and the processes it started.
fn kill_postmaster_tree(data_dir: &Path) {
    let Some(pm) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return;
    };
    let mut victims = vec![pm];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if parent_of(pid) == Some(pm) {
                    victims.push(pid);
                }
            }
        }
    }
    for v in victims {
        let _ = std::process::Command::new("kill")
            .args(["-9", &v.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Stop a private Postgres for good.
pub fn stop_postgres(mut pg: Postgres) {
    kill_postmaster_tree(&pg.dir().join("data"));
    pg.kill();
}

/// User + system CPU seconds of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

/// Resident set size of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Raise this process's open-file limit to its hard limit (children inherit it).
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}
