//! A real PostgreSQL server for the tests of replicas sharing batches: a fresh cluster
//! (`initdb`) run as the `postgres` account (the server refuses root) on a free loopback port,
//! with password authentication, stopped and removed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The superuser the cluster is created with, and its password.
pub const USER: &str = "gateway";
pub const PASSWORD: &str = "test-only-password";

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Holds the cluster; removed on drop.
    _dir: tempfile::TempDir,
}

/// The newest installed server's bin directory (Debian puts it outside PATH).
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// Runs `program` (in the server's bin directory) as the `postgres` account.
fn as_postgres(bin: &std::path::Path, program: &str, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runuser");
    assert!(status.success(), "{program} {args:?} failed");
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PASSWORD).expect("password file");
        // The postgres account must reach the cluster's directory and read the password.
        let chmod = |path: &std::path::Path, mode| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        chmod(dir.path(), 0o755);
        chmod(&pwfile, 0o644);
        std::fs::create_dir(&data).expect("data dir");
        let owned = Command::new("chown")
            .args(["postgres:postgres", &data.display().to_string()])
            .status()
            .expect("chown");
        assert!(owned.success());
        let bin = server_bin();
        let pw = format!("--pwfile={}", pwfile.display());
        let data_arg = data.display().to_string();
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                &data_arg,
                "-U",
                USER,
                &pw,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
            ],
        );
        let pg = Postgres {
            port: super::free_port(),
            bin,
            data,
            _dir: dir,
        };
        pg.resume();
        pg
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k /tmp -c fsync=off",
            self.port
        );
        let log = self.data.join("server.log").display().to_string();
        let data = self.data.display().to_string();
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    /// Stops the server (fast shutdown: connections are closed at once).
    pub fn stop(&self) {
        let data = self.data.display().to_string();
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "stop"],
        );
    }

    /// The gateway's `[batch] store`: no password in it.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
