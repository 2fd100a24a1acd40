//! Real Redis servers for the tests of shared limits: one server, or a three-node cluster.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A redis-server on a free loopback port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start_on(port: u16) -> Redis {
        Redis::spawn(port, &[])
    }

    /// A redis-server on `port` (loopback, nothing persisted) with `extra` arguments, once it
    /// accepts connections.
    fn spawn(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(port);
        Redis {
            port,
            child: Some(child),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-master Redis Cluster on free loopback ports, in a temporary directory.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| crate::common::free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                let (conf, dir) = (conf.display().to_string(), dir.path().display().to_string());
                Redis::spawn(
                    *port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--dir",
                        &dir,
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli (redis-tools) must be installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        // The cluster answers once every slot is served.
        let ready = retry(500, Duration::from_millis(20), || {
            let info = Command::new("redis-cli")
                .args(["-p", &ports[0].to_string(), "cluster", "info"])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
        });
        assert!(ready, "the Redis cluster did not become ready");
        RedisCluster {
            ports,
            nodes,
            _dir: dir,
        }
    }

    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }
}

/// Waits (up to 2 s) until `port` accepts connections; a server that never does fails the
/// test later, when it is used.
fn wait_for_port(port: u16) {
    retry(200, Duration::from_millis(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Calls `check` up to `times` times, `every` apart, until it holds; whether it did. These
/// servers start from synchronous code, outside any runtime.
fn retry(times: u32, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..times {
        if check() {
            return true;
        }
        std::thread::sleep(every);
    }
    false
}
