//! Zero-downtime binary upgrade, driven from inside the service: on SIGUSR2 the gateway
//! starts the binary at its own path again (the new one, after a package upgrade) with
//! `run --upgrade`, waits until that process listens on `server.upgrade_socket`, and sends
//! itself SIGQUIT: Pingora hands the listening sockets over, and this process drains its
//! streams and exits. Under systemd (`Type=notify`, `NotifyAccess=all`) each process tells the
//! service manager it is ready and which process is now the service's main one, so the unit
//! follows the new process (`systemctl kill -s USR2 inference-gateway`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

pub struct Upgrader {
    /// The binary as it was started (its path, not `/proc/self/exe`, which points at the old
    /// file once a package upgrade replaced it).
    binary: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Upgrader {
    pub fn new(config: PathBuf, socket: PathBuf) -> Upgrader {
        let binary = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() || p.components().count() > 1)
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("inference-gateway"));
        Upgrader {
            binary,
            config,
            socket,
        }
    }

    /// Starts the successor and, once it waits for the sockets, hands them over.
    async fn upgrade(&self) {
        // A socket file left by an earlier upgrade would look like a successor already waiting.
        let _ = std::fs::remove_file(&self.socket);
        log::info!(
            "SIGUSR2: starting {} to take over the listening sockets",
            self.binary.display()
        );
        let mut child = match std::process::Command::new(&self.binary)
            .args(["run", "--upgrade", "--config"])
            .arg(&self.config)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("upgrade: cannot start {}: {e}", self.binary.display());
                return;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                log::error!("upgrade: the new process exited ({status}) before taking over; this one keeps serving");
                return;
            }
            if Instant::now() > deadline {
                log::error!("upgrade: the new process did not get ready within 30 s; this one keeps serving");
                let _ = child.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log::info!(pid = child.id(); "upgrade: handing the listening sockets over and draining");
        // Not waited for: it outlives this process (the service manager adopts it).
        drop(child);
        let me = nix::unistd::Pid::this();
        if let Err(e) = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGQUIT) {
            log::error!("upgrade: cannot signal this process: {e}");
        }
    }
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) that this process is ready and is
/// the service's main process.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let text = path.to_string_lossy();
        match text.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(message.as_bytes(), &addr)?;
            }
            None => {
                socket.send_to(message.as_bytes(), &*path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("cannot notify systemd of readiness: {e}");
    }
}

#[async_trait]
impl BackgroundService for Upgrader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        notify_ready();
        use tokio::signal::unix::{signal, SignalKind};
        let mut requests = match signal(SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGUSR2, in-service upgrades are off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = requests.recv() => self.upgrade().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
