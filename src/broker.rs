//! Wiring: binds the listeners, starts the router and accept loops, and shuts it all
//! down in order.
//!
//! Shutdown order: stop accepting; tell the router, which closes every connection
//! (v5 clients get DISCONNECT 0x8B after their outbox drains); wait for connection
//! tasks up to `shutdown_timeout`; then the router publishes the wills still due,
//! waits for its last batch to be durable and stops; then the store closes.
//!
//! At start the store (unless `storage.in_memory`) is opened and replayed before
//! any listener accepts, so the first client already sees every recovered session.

use crate::clock::Clock;
use crate::config::Config;
use crate::connection::Shared;
use crate::listener::Transport;
use crate::metrics::Metrics;
use crate::router::{self, Router, RouterMsg};
use crate::tls::TlsCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// A listening socket with our backlog (tokio's `bind` fixes it at 1024) and
/// SO_REUSEADDR, so a restarted broker can bind while old connections linger in
/// TIME_WAIT.
fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Load every file the config names (certificates and keys, password file, ACL
/// file) as a start would, and return what fails, each with its config key. For
/// `tern check-config`, so a file can be checked before a start or a SIGHUP.
pub fn check_files(config: &Config) -> Vec<crate::config::ConfigError> {
    let mut errors = Vec::new();
    let mut err =
        |key: String, message: String| errors.push(crate::config::ConfigError { key, message });
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            if let Err(e) = crate::tls::server_config(t) {
                err(format!("listeners[{i}].tls"), e.to_string());
            }
        }
    }
    if let Some(p) = &config.auth.password_file {
        if let Err(e) = crate::login::load_password_file(p) {
            err("auth.password_file".into(), e.to_string());
        }
    }
    if let Some(p) = &config.auth.acl_file {
        if let Err(e) = crate::login::load_acl(p) {
            err("auth.acl_file".into(), e.to_string());
        }
    }
    errors
}

/// Send the router a message carrying a reply channel and wait for the answer.
/// False when the router has already stopped.
async fn ask_router(
    router: &mpsc::Sender<RouterMsg>,
    msg: impl FnOnce(oneshot::Sender<()>) -> RouterMsg,
) -> bool {
    let (tx, rx) = oneshot::channel();
    router.send(msg(tx)).await.is_ok() && rx.await.is_ok()
}

pub struct Broker {
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    router_tx: mpsc::Sender<RouterMsg>,
    router_task: JoinHandle<()>,
    accept_tasks: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    store_thread: Option<crate::store::StoreThread>,
    shared: Arc<Shared>,
    transports: Vec<Arc<Transport>>,
    /// What a reload with a new config changes; the lock also keeps two
    /// reloads from interleaving.
    reloadable: tokio::sync::Mutex<Reloadable>,
}

/// The parts of the config a reload applies, as last applied.
struct Reloadable {
    bridges: crate::bridge::registry::Bridges,
    queues: Vec<crate::config::QueueConfig>,
}

impl Broker {
    /// Bind every listener and start serving. Fails if a bind fails.
    pub async fn start(config: Config) -> io::Result<Broker> {
        let started = std::time::Instant::now();
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let (router_tx, router_rx) = mpsc::channel(config.limits.router_queue);
        let mut router = Router::new(&config, metrics.clone(), Clock::read());
        let logins = crate::login::Logins::new(&config).map_err(io::Error::other)?;
        let acl = match &config.auth.acl_file {
            Some(path) => Some(Arc::new(
                crate::login::load_acl(path).map_err(io::Error::other)?,
            )),
            None => None,
        };
        if !logins.anonymous_allowed() && config.auth.password_file.is_none() {
            let certs = config
                .listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.identity_as_username));
            if !certs {
                warn!(
                    "anonymous clients are refused (the config declares listeners, or one is \
                     not on loopback) and there is no password_file or certificate identity: no \
                     client can log in; set [auth] allow_anonymous = true or a password_file"
                );
            }
        }
        let mut transports = Vec::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => {
                    Some(Arc::new(TlsCell::new(t.clone()).map_err(|e| {
                        io::Error::other(format!("listener {}: {e}", l.bind))
                    })?))
                }
                None => None,
            };
            transports.push(Arc::new(Transport {
                tls,
                websocket: l.websocket,
            }));
        }
        let mut store_thread = None;
        if !config.storage.in_memory {
            let (handle, thread, recovered) = crate::store::open(&config.storage, metrics.clone())
                .map_err(|e| io::Error::other(e.to_string()))?;
            router = router.with_store(handle, recovered, Clock::read());
            store_thread = Some(thread);
        }
        // This broker's id for the bridges' loop check, kept with the store
        // (after the store opened it: a bad data directory is reported there).
        let node_id: Arc<str> = crate::bridge::origin::node_id(
            (!config.storage.in_memory).then_some(config.storage.dir.as_path()),
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}/node-id: {e}", config.storage.dir.display()),
            )
        })?
        .into();
        router.set_node_id(node_id.clone());
        // After recovery, so stored subscriptions are checked against the ACL of
        // this start, which may have changed while Tern was down.
        if acl.is_some() {
            router.set_acl(acl, std::time::Instant::now());
        }
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let tcp = bind(l.bind, config.limits.listen_backlog).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind))
            })?;
            listeners.push(tcp);
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Bridges: each a task with a local session of its own (started
        // below, once the listeners are up).
        let mut bridges = crate::bridge::registry::Bridges::new(
            router_tx.clone(),
            shutdown.clone(),
            tracker.clone(),
            config.topic_limits(),
            node_id,
        );
        let statuses = bridges.statuses();
        let (snapshots_tx, snapshots) = watch::channel(Arc::new(router::Snapshot::default()));
        let publishing = router::Publishing {
            snapshots: snapshots_tx,
            sys_every: Some(config.mqtt.sys_interval).filter(|d| !d.is_zero()),
            bridges: statuses.clone(),
            started,
        };
        let router_task = tokio::spawn(router::run(router, router_rx, publishing));
        // Ends with the runtime; nothing to shut down.
        tokio::spawn(crate::memory::return_freed(
            metrics.clone(),
            std::time::Duration::from_secs(2),
        ));
        let shared = Arc::new(Shared {
            config: config.clone(),
            router: router_tx.clone(),
            metrics: metrics.clone(),
            next_conn_id: AtomicU64::new(1),
            logins,
            pre_login: Default::default(),
        });
        let slots = Arc::new(Semaphore::new(config.limits.max_connections));
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for ((tcp, transport), l) in listeners
            .into_iter()
            .zip(&transports)
            .zip(&config.listeners)
        {
            let addr = tcp.local_addr()?;
            info!("{} listening on {addr}", l.scheme());
            addrs.push(addr);
            accept_tasks.push(tokio::spawn(crate::listener::accept_loop(
                tcp,
                transport.clone(),
                shared.clone(),
                slots.clone(),
                shutdown.clone(),
                tracker.clone(),
            )));
        }
        bridges.start_missing(&config.bridges);
        let mut admin_addr = None;
        if let Some(bind_addr) = config.admin.bind {
            let tcp = bind(bind_addr, 64).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("admin: cannot listen on {bind_addr}: {e}"),
                )
            })?;
            let addr = tcp.local_addr()?;
            info!("admin endpoint on http://{addr}");
            admin_addr = Some(addr);
            let ctx = crate::admin::AdminContext {
                router: router_tx.clone(),
                token: config.admin.token.as_deref().map(Arc::from),
                bridges: statuses,
                metrics: metrics.clone(),
                snapshots: snapshots.clone(),
                started,
            };
            accept_tasks.push(tokio::spawn(crate::admin::serve(
                tcp,
                Arc::new(ctx),
                shutdown.clone(),
            )));
        }
        let declared = config.all_queues();
        Ok(Broker {
            addrs,
            admin_addr,
            shutdown,
            router_tx,
            router_task,
            accept_tasks,
            tracker,
            metrics,
            config,
            store_thread,
            shared,
            transports,
            reloadable: tokio::sync::Mutex::new(Reloadable {
                bridges,
                queues: declared,
            }),
        })
    }

    /// Re-read certificates, the password file and the ACL file (SIGHUP), without
    /// dropping connections. A file that fails to load keeps its old version; the
    /// errors are logged and returned. With `new` (the config file read again),
    /// also apply its work queues and bridges: bridges added, changed or
    /// removed, each without losing its buffer.
    pub async fn reload(&self, new: Option<&Config>) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(new) = new {
            errors.extend(self.reload_queues_and_bridges(new).await);
        }
        for t in &self.transports {
            if let Some(cell) = &t.tls {
                match cell.reload() {
                    Ok(()) => {
                        info!(cert = %cell.settings().cert.display(), "TLS certificates reloaded")
                    }
                    Err(e) => errors.push(format!("TLS: {e} (keeping the old certificates)")),
                }
            }
        }
        match self.shared.logins.reload() {
            Ok(Some(passwords)) => {
                ask_router(&self.router_tx, |reply| RouterMsg::Revoke {
                    passwords,
                    reply,
                })
                .await;
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("password file: {e} (keeping the old one)")),
        }
        if let Some(path) = &self.config.auth.acl_file {
            match crate::login::load_acl(path) {
                Ok(acl) => {
                    let acl = Some(Arc::new(acl));
                    if ask_router(&self.router_tx, |reply| RouterMsg::SetAcl { acl, reply }).await {
                        info!(file = %path.display(), "ACL file reloaded");
                    } else {
                        errors.push("ACL file: the broker is shutting down".into());
                    }
                }
                Err(e) => errors.push(format!("ACL file: {e} (keeping the old one)")),
            }
        }
        for e in &errors {
            warn!("reload: {e}");
        }
        errors
    }

    /// Stop the bridges `new` removes or changes, make the declared queues
    /// those of `new` (the bridges' buffers among them), then start the
    /// bridges not running. A link starts after its buffer is declared, so it
    /// never creates it with a subscription's small caps.
    async fn reload_queues_and_bridges(&self, new: &Config) -> Vec<String> {
        let mut r = self.reloadable.lock().await;
        r.bridges.stop_changed(&new.bridges).await;
        let declared = new.all_queues();
        let mut problems = Vec::new();
        if declared != r.queues {
            let (tx, rx) = oneshot::channel();
            let msg = RouterMsg::ReloadQueues {
                declared: declared.clone(),
                reply: tx,
            };
            match self.router_tx.send(msg).await {
                Ok(()) => problems = rx.await.unwrap_or_default(),
                Err(_) => problems.push("queues: the broker is shutting down".into()),
            }
            r.queues = declared;
        }
        r.bridges.start_missing(&new.bridges);
        problems
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bound addresses, in listener order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Graceful shutdown; returns when the router has stopped.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.shutdown.cancel();
        for t in self.accept_tasks {
            let _ = t.await;
        }
        ask_router(&self.router_tx, |reply| RouterMsg::Shutdown { reply }).await;
        self.tracker.close();
        if tokio::time::timeout(self.config.mqtt.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            info!(
                "shutdown timeout: {} connections still open",
                self.tracker.len()
            );
        }
        ask_router(&self.router_tx, |reply| RouterMsg::Finish { reply }).await;
        drop(self.router_tx);
        let _ = self.router_task.await;
        if let Some(t) = self.store_thread {
            let _ = tokio::task::spawn_blocking(move || t.close()).await;
        }
        info!("stopped");
    }
}
