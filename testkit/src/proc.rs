//! A child process the test owns: output to a log file, signals, restart with the same
//! command line, and kill -9 when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A spawned process and how to spawn it again.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    as_user: Option<String>,
    child: Option<Child>,
}

impl Proc {
    /// Spawn `program args` with `envs`, appending stdout and stderr to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<Proc> {
        Self::spawn_as(name, program, args, envs, log, None)
    }

    /// Like [`Proc::spawn`], run as `user` (by uid/gid, so that the handle's pid is the
    /// program itself and signals reach it) when given.
    pub fn spawn_as(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
        as_user: Option<&str>,
    ) -> std::io::Result<Proc> {
        let mut p = Proc {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: log.to_owned(),
            as_user: as_user.map(str::to_owned),
            child: None,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> std::io::Result<()> {
        let out = File::options().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.program);
        if let Some(user) = &self.as_user {
            let (uid, gid) = user_ids(user)?;
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.child = Some(cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("spawning {} ({}): {e}", self.name, self.program.display()),
            )
        })?);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Send `signal` (e.g. `libc::SIGTERM`, `libc::SIGSTOP`).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a pid we spawned; at worst it reports ESRCH.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// SIGTERM: ask the process to shut down gracefully.
    pub fn term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait up to `timeout` for the process to exit; its status if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start the same command line again (after it exited or was killed).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill9();
        self.start()
    }
}

/// uid and gid of a local user.
pub fn user_ids(user: &str) -> std::io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no user {user}")))
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
