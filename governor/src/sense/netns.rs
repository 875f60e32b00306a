//! Network namespaces: reading and enforcing in the namespace whose ports
//! the policies name (`agent.netns`), which need not be the agent's own.
//!
//! A namespace is a property of a thread. A netlink socket or a listener is
//! bound to the namespace of the thread that created it, so they are made
//! in a short-lived thread that joined the namespace; `/proc/thread-self/net`
//! is read by a long-lived worker thread that stays there.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use anyhow::Context as _;

use crate::sense::{
    procfs::{self, ListenCounters},
    sockdiag::{QueuesByPort, SockDiag},
};

/// Runs `f` in a new thread that has joined the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = path.to_path_buf();
    thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            join(&path)?;
            f()
        })
        .context("spawning a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Moves the calling thread into the network namespace at `path`; a no-op
/// if it is already there (so the default needs no setns, nor the
/// privilege for it).
pub fn join(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let same =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.ino() == b.ino() && a.dev() == b.dev();
    if let (Ok(target), Ok(own)) = (
        std::fs::metadata(path),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) && same(&target, &own)
    {
        return Ok(());
    }
    let f = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    // SAFETY: setns on a valid fd; CLONE_NEWNET affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("joining network namespace {}", path.display()));
    }
    Ok(())
}

/// What the worker reads each interval.
pub struct NetReading {
    /// Accept queues per local port, if asked for.
    pub queues: Option<QueuesByPort>,
    /// `ListenOverflows`/`ListenDrops` of the namespace.
    pub listen: Option<ListenCounters>,
}

/// Whether to list the accept queues, and where to send the reading.
type Request = (bool, mpsc::Sender<anyhow::Result<NetReading>>);

/// A thread living in one network namespace, reading its accept queues and
/// listen counters on request. It ends when dropped.
pub struct NetnsWorker {
    requests: mpsc::Sender<Request>,
    /// The namespace it reads.
    pub path: PathBuf,
}

impl NetnsWorker {
    /// Starts the worker in the namespace at `path`.
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let ns = path.to_path_buf();
        thread::Builder::new()
            .name("netns-reader".into())
            .spawn(move || {
                let setup = join(&ns).and_then(|()| SockDiag::new().context("opening sock_diag"));
                let mut diag = match setup {
                    Ok(d) => {
                        let _ = ready_tx.send(Ok(()));
                        d
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let proc_self = Path::new("/proc/thread-self");
                while let Ok((queues, reply)) = rx.recv() {
                    let queues = queues.then(|| diag.listen_queues()).transpose();
                    let reading = queues
                        .map_err(anyhow::Error::from)
                        .map(|queues| NetReading {
                            queues,
                            listen: procfs::listen_counters(proc_self).ok(),
                        });
                    let _ = reply.send(reading);
                }
            })
            .context("spawning the namespace reader")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the namespace reader died"))??;
        Ok(Self {
            requests: tx,
            path: path.to_path_buf(),
        })
    }

    /// One reading: the listen counters, and the accept queues if `queues`.
    pub fn read(&self, queues: bool) -> anyhow::Result<NetReading> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send((queues, tx))
            .map_err(|_| anyhow::anyhow!("the namespace reader is gone"))?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the namespace reader is gone"))?
    }
}
