//! A redis-server of the caller's own, on a loopback port, stopped when dropped: for the
//! cluster tests and the cluster benchmark (each includes this file with `#[path]`).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Child,
    pub port: u16,
    /// Where it snapshots to (`save`) and loads from when started again, if it persists.
    dir: Option<std::path::PathBuf>,
}

impl Redis {
    /// Starts on a free port, once it accepts connections (Debian's `redis-server`, which
    /// `scripts/test` installs); nothing is persisted.
    pub fn start() -> Redis {
        Redis::launch_on_a_free_port(None, &[])
    }

    /// Starts on `port` (again, after [`Redis::stop`]), empty.
    #[allow(dead_code, reason = "not every includer restarts on a port of its own")]
    pub fn start_on(port: u16) -> Redis {
        Redis::launch(port, None, &[]).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts on a free port, refusing every command until `AUTH password`.
    #[allow(dead_code, reason = "not every includer needs a password")]
    pub fn start_with_password(password: &str) -> Redis {
        Redis::launch_on_a_free_port(None, &["--requirepass", password])
    }

    /// Starts on a free port with a snapshot file in `dir`, loaded when it exists: what
    /// [`Redis::save`] wrote is what a start in the same `dir` begins with.
    #[allow(dead_code, reason = "not every includer restarts from a snapshot")]
    pub fn start_persistent(port: Option<u16>, dir: &std::path::Path) -> Redis {
        match port {
            Some(port) => {
                Redis::launch(port, Some(dir.to_owned()), &[]).unwrap_or_else(|why| panic!("{why}"))
            }
            None => Redis::launch_on_a_free_port(Some(dir.to_owned()), &[]),
        }
    }

    /// Launches on a port the system says is free. Another test may take that port between
    /// the check and redis-server's bind (the tests run in parallel): then redis-server exits,
    /// and another port is tried.
    fn launch_on_a_free_port(dir: Option<std::path::PathBuf>, extra: &[&str]) -> Redis {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free loopback port")
                .port();
            match Redis::launch(port, dir.clone(), extra) {
                Ok(redis) => return redis,
                Err(why) => failures.push(why),
            }
        }
        panic!("redis-server did not start: {failures:?}");
    }

    fn launch(port: u16, dir: Option<std::path::PathBuf>, extra: &[&str]) -> Result<Redis, String> {
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
        ];
        if let Some(dir) = &dir {
            args.extend(["--dir".to_owned(), dir.display().to_string()]);
        }
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let mut child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        // Generous: the whole suite runs in parallel on two cores.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on port {port} did not start in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { child, port, dir })
    }

    /// Writes a snapshot now (`SAVE`), which a later start in the same dir loads.
    #[allow(dead_code, reason = "not every includer restarts from a snapshot")]
    pub fn save(&self) {
        assert!(self.dir.is_some(), "only a persistent Redis saves");
        let saved = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SAVE"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert_eq!(String::from_utf8_lossy(&saved.stdout).trim(), "OK");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers, data is kept.
    #[allow(dead_code, reason = "not every includer makes Redis unreachable")]
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server answer again (SIGCONT).
    #[allow(dead_code, reason = "not every includer makes Redis unreachable")]
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Runs `redis-cli` against this server; its standard output.
    #[allow(dead_code, reason = "not every includer reads or writes keys itself")]
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): what it did not snapshot is gone.
    pub fn stop(&mut self) {
        self.signal_quietly("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn signal_quietly(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
