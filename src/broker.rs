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
use crate::config::changes::Change;
use crate::config::{Config, ListenerConfig, Overrides};
use crate::connection::Shared;
use crate::connection_slots::ConnectionSlots;
use crate::listener::Transport;
use crate::metrics::Metrics;
use crate::reload::Swap;
use crate::router::{self, Router, RouterMsg};
use crate::tls::TlsCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch};
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

/// Bind a listener's socket, the error naming its address.
fn bind_listener(l: &ListenerConfig, backlog: u32) -> io::Result<TcpListener> {
    bind(l.bind, backlog)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind)))
}

/// The warning for a config under which no client can log in.
fn warn_if_nobody_can_log_in(config: &Config, logins: &crate::login::Logins) {
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
    if let Some(t) = &config.admin.tls {
        if let Err(e) = crate::tls::server_config(t) {
            err("admin.tls".into(), e.to_string());
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

/// What a file sent to `POST /api/v1/config/check` would change if the broker
/// read it on a SIGHUP: it is loaded as a reload loads it (in the broker's
/// environment, with its command-line overrides) and compared with the
/// running configuration. The files it names are not opened: the caller
/// chose them, and `tern check-config` loads them on its own side.
pub fn against_running(
    running: &Config,
    overrides: &Overrides,
    text: &str,
) -> Result<Vec<Change>, Vec<crate::config::ConfigError>> {
    let mut new = Config::load_str(Some(text)).map_err(|e| e.0)?;
    overrides.apply(&mut new);
    Ok(crate::config::changes::diff(running, &new))
}

/// A listener as it runs: what it was configured as, where it is bound, and
/// its accept loop, which hands its socket back when stopped.
struct RunningListener {
    config: ListenerConfig,
    addr: SocketAddr,
    transport: Arc<Transport>,
    stop: CancellationToken,
    task: JoinHandle<TcpListener>,
}

/// Where each listener is bound, for `local_addrs` and `/api/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoundListener {
    /// "mqtt", "mqtts", "ws" or "wss".
    pub scheme: &'static str,
    pub address: SocketAddr,
}

pub struct Broker {
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    router_tx: mpsc::Sender<RouterMsg>,
    router_task: JoinHandle<()>,
    /// The admin endpoint's accept loop.
    admin_task: Option<JoinHandle<()>>,
    /// `[admin] tls`: its certificates, read again by a reload.
    admin_tls: Option<Arc<TlsCell>>,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    store_thread: Option<crate::store::StoreThread>,
    shared: Arc<Shared>,
    /// Connection slots (`limits.max_connections`), resized by a reload.
    slots: ConnectionSlots,
    overrides: Overrides,
    bound: Arc<Swap<Vec<BoundListener>>>,
    /// What a reload with a new config changes; the lock also keeps two
    /// reloads from interleaving.
    reloadable: tokio::sync::Mutex<Reloadable>,
}

/// The parts of the config a reload applies, as last applied.
struct Reloadable {
    bridges: crate::bridge::registry::Bridges,
    queues: Vec<crate::config::QueueConfig>,
    listeners: Vec<RunningListener>,
}

/// TLS settings loaded (certificates and keys read), the error naming `what`.
fn tls_cell(t: &Option<crate::config::TlsConfig>, what: &str) -> io::Result<Option<Arc<TlsCell>>> {
    t.as_ref()
        .map(|t| {
            TlsCell::new(t.clone())
                .map(Arc::new)
                .map_err(|e| io::Error::other(format!("{what}: {e}")))
        })
        .transpose()
}

/// The transport of a listener: its TLS certificates are loaded here.
fn transport(l: &ListenerConfig) -> io::Result<Arc<Transport>> {
    Ok(Arc::new(Transport {
        tls: tls_cell(&l.tls, &format!("listener {}", l.bind))?,
        websocket: l.websocket,
    }))
}

impl Broker {
    /// Bind every listener and start serving. Fails if a bind fails.
    pub async fn start(config: Config) -> io::Result<Broker> {
        Broker::start_with(config, Overrides::default()).await
    }

    /// [`Broker::start`] with what the command line set over the file; a
    /// reload applies them again to the file it reads.
    pub async fn start_with(mut config: Config, overrides: Overrides) -> io::Result<Broker> {
        overrides.apply(&mut config);
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
        warn_if_nobody_can_log_in(&config, &logins);
        let mut transports = Vec::new();
        for l in &config.listeners {
            transports.push(transport(l)?);
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
        let mut sockets = Vec::new();
        for l in &config.listeners {
            sockets.push(bind_listener(l, config.limits.listen_backlog)?);
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Bridges: each a task with a local session of its own (started
        // below, once the listeners are up).
        let bridges = crate::bridge::registry::Bridges::new(
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
            bridges: statuses.clone(),
            started,
        };
        let router_task = tokio::spawn(router::run(router, router_rx, publishing));
        // Ends with the runtime; nothing to shut down.
        tokio::spawn(crate::memory::return_freed(
            metrics.clone(),
            std::time::Duration::from_secs(2),
        ));
        let (hibernation, watcher) =
            crate::connection::hibernate::Hibernation::start(tracker.clone(), metrics.clone())?;
        // Ends at shutdown (`Hibernation::close`) or with the runtime.
        tokio::spawn(watcher);
        let shared = Arc::new(Shared {
            config: Swap::new(config.clone()),
            router: router_tx.clone(),
            metrics: metrics.clone(),
            next_conn_id: AtomicU64::new(1),
            logins: Swap::new(Arc::new(logins)),
            pre_login: Default::default(),
            hibernation: Some(hibernation),
            spawner: Some(Arc::new(crate::connection::Spawner::start(
                tokio::runtime::Handle::current(),
                tracker.clone(),
            )?)),
        });
        let slots = ConnectionSlots::new(config.limits.max_connections);
        let mut broker = Broker {
            admin_addr: None,
            shutdown,
            router_tx,
            router_task,
            admin_task: None,
            admin_tls: None,
            tracker,
            metrics,
            store_thread,
            shared,
            slots,
            overrides,
            bound: Arc::new(Swap::new(Arc::new(Vec::new()))),
            reloadable: tokio::sync::Mutex::new(Reloadable {
                bridges,
                queues: config.all_queues(),
                listeners: Vec::new(),
            }),
        };
        let mut listeners = Vec::new();
        for ((tcp, transport), l) in sockets.into_iter().zip(transports).zip(&config.listeners) {
            listeners.push(broker.serve_listener(tcp, transport, l.clone())?);
        }
        broker.publish_bound(&listeners);
        {
            let r = broker.reloadable.get_mut();
            r.listeners = listeners;
            r.bridges.start_missing(&config.bridges);
        }
        if let Some(bind_addr) = config.admin.bind {
            let tcp = bind(bind_addr, 64).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("admin: cannot listen on {bind_addr}: {e}"),
                )
            })?;
            let addr = tcp.local_addr()?;
            let tls = tls_cell(&config.admin.tls, "admin")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            info!("admin endpoint on {scheme}://{addr}");
            broker.admin_addr = Some(addr);
            broker.admin_tls = tls.clone();
            let ctx = crate::admin::AdminContext {
                router: broker.router_tx.clone(),
                shared: broker.shared.clone(),
                overrides: broker.overrides.clone(),
                listeners: broker.bound.clone(),
                bridges: statuses,
                metrics: broker.metrics.clone(),
                snapshots: snapshots.clone(),
                started,
            };
            broker.admin_task = Some(tokio::spawn(crate::admin::serve(
                tcp,
                Arc::new(ctx),
                tls,
                broker.shutdown.clone(),
            )));
        }
        Ok(broker)
    }

    /// Start the accept loop of a bound listener.
    fn serve_listener(
        &self,
        tcp: TcpListener,
        transport: Arc<Transport>,
        config: ListenerConfig,
    ) -> io::Result<RunningListener> {
        let addr = tcp.local_addr()?;
        info!("{} listening on {addr}", config.scheme());
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(crate::listener::accept_loop(
            tcp,
            transport.clone(),
            self.shared.clone(),
            self.slots.clone(),
            stop.clone(),
            self.tracker.clone(),
        ));
        Ok(RunningListener {
            config,
            addr,
            transport,
            stop,
            task,
        })
    }

    fn publish_bound(&self, listeners: &[RunningListener]) {
        let list = listeners
            .iter()
            .map(|l| BoundListener {
                scheme: l.config.scheme(),
                address: l.addr,
            })
            .collect();
        self.bound.set(Arc::new(list));
    }

    /// Re-read certificates, the password file and the ACL file (SIGHUP), without
    /// dropping connections. A file that fails to load keeps its old version; the
    /// errors are logged and returned. With `new` (the config file read again),
    /// apply all of it that can change live (`config::changes`): limits,
    /// listeners added, removed or changed, `[auth]`, the admin token, work
    /// queues and bridges (each without losing its buffer). What needs a
    /// restart is logged, and the running value stays.
    pub async fn reload(&self, new: Option<&Config>) -> Vec<String> {
        let mut errors = Vec::new();
        // First: two reloads never interleave, and each compares with what
        // the one before it applied.
        let mut r = self.reloadable.lock().await;
        let running = self.shared.config.get();
        let mut applied = match new {
            Some(new) => {
                let mut new = new.clone();
                self.overrides.apply(&mut new);
                for c in crate::config::changes::diff(&running, &new) {
                    match c.needs_restart {
                        Some(why) => warn!(
                            key = %c.key,
                            "reload: {} {}, but {why}: it takes a restart (the running value stays)",
                            c.key,
                            c.what
                        ),
                        None => info!(key = %c.key, "reload: {} {}", c.key, c.what),
                    }
                }
                crate::config::changes::applicable(&running, &new)
            }
            None => (*running).clone(),
        };
        // What can fail comes first. What failed keeps its running value in
        // `applied`, so the next reload (and `check-config --against-running`)
        // sees it as still to do. The logins before the listeners: a listener
        // added now must not accept under the old `[auth]`.
        let passwords = self.reload_logins(&running, &mut applied, &mut errors);
        if new.is_some() {
            self.reload_listeners(&mut r, &mut applied, &mut errors)
                .await;
        }
        let applied = Arc::new(applied);
        if applied != running {
            self.shared.config.set(applied.clone());
            let config = applied.clone();
            if !ask_router(&self.router_tx, |reply| RouterMsg::Reconfigure {
                config,
                reply,
            })
            .await
            {
                errors.push("limits: the broker is shutting down".into());
            }
            self.slots.set_limit(applied.limits.max_connections);
        }
        if new.is_some() {
            errors.extend(self.reload_queues_and_bridges(&mut r, &applied).await);
        }
        if let Some(passwords) = passwords {
            ask_router(&self.router_tx, |reply| RouterMsg::Revoke {
                passwords,
                reply,
            })
            .await;
        }
        let admin_tls = self.admin_tls.iter();
        let listeners_tls = r.listeners.iter().filter_map(|l| l.transport.tls.as_ref());
        for cell in listeners_tls.chain(admin_tls) {
            match cell.reload() {
                Ok(()) => {
                    info!(cert = %cell.settings().cert.display(), "TLS certificates reloaded")
                }
                Err(e) => errors.push(format!("TLS: {e} (keeping the old certificates)")),
            }
        }
        match &applied.auth.acl_file {
            Some(path) => match crate::login::load_acl(path) {
                Ok(acl) => {
                    let acl = Some(Arc::new(acl));
                    if ask_router(&self.router_tx, |reply| RouterMsg::SetAcl { acl, reply }).await {
                        info!(file = %path.display(), "ACL file reloaded");
                    } else {
                        errors.push("ACL file: the broker is shutting down".into());
                    }
                }
                Err(e) => errors.push(format!("ACL file: {e} (keeping the old one)")),
            },
            None if running.auth.acl_file.is_some() => {
                ask_router(&self.router_tx, |reply| RouterMsg::SetAcl {
                    acl: None,
                    reply,
                })
                .await;
                info!("ACL file removed from the config: every client may publish and subscribe anywhere");
            }
            None => {}
        }
        for e in &errors {
            warn!("reload: {e}");
        }
        errors
    }

    /// `[auth]` changed: a new login checker (the password file read again,
    /// failure counts kept), in use from now on; if it cannot be built, the
    /// running `[auth]` stays, in `applied` too. Otherwise the password file
    /// read again. The password file to revoke logins against, if there is one.
    fn reload_logins(
        &self,
        running: &Config,
        applied: &mut Config,
        errors: &mut Vec<String>,
    ) -> Option<Arc<crate::auth::PasswordFile>> {
        let auth_changed = running.auth != applied.auth
            || running.anonymous_allowed() != applied.anonymous_allowed();
        if !auth_changed {
            return match self.shared.logins.get().reload() {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("password file: {e} (keeping the old one)"));
                    None
                }
            };
        }
        match crate::login::Logins::new(applied) {
            Ok(l) => {
                let l = l.keep_failures_of(&self.shared.logins.get());
                warn_if_nobody_can_log_in(applied, &l);
                let passwords = l.passwords();
                self.shared.logins.set(Arc::new(l));
                info!("[auth] reloaded");
                passwords
            }
            Err(e) => {
                errors.push(format!("[auth]: {e} (keeping the running [auth])"));
                applied.auth = running.auth.clone();
                None
            }
        }
    }

    /// Make the listeners those of `config`: stop those it removes (their
    /// open connections stay until they end, as with nginx's reload), restart
    /// those it changes on the same socket, bind those it adds. Listeners are
    /// matched by address (several on one address, e.g. port 0, in order).
    /// `config.listeners` becomes what runs: a change that failed keeps the
    /// running listener, an address that could not be bound is left out.
    async fn reload_listeners(
        &self,
        r: &mut Reloadable,
        config: &mut Config,
        errors: &mut Vec<String>,
    ) {
        let wanted = &config.listeners;
        let mut claimed = vec![false; wanted.len()];
        let mut claim = |same: &dyn Fn(&ListenerConfig) -> bool| {
            let i = (0..wanted.len()).find(|&i| !claimed[i] && wanted.get(i).is_some_and(same))?;
            claimed[i] = true;
            Some(i)
        };
        let mut kept: Vec<(usize, RunningListener)> = Vec::new();
        let mut rest = Vec::new();
        for l in std::mem::take(&mut r.listeners) {
            match claim(&|c| *c == l.config) {
                Some(i) => kept.push((i, l)),
                None => rest.push(l),
            }
        }
        for l in rest {
            l.stop.cancel();
            let tcp = match l.task.await {
                Ok(tcp) => tcp,
                Err(e) => {
                    errors.push(format!("listener {}: {e}", l.config.bind));
                    continue;
                }
            };
            let bind = l.config.bind;
            let Some(i) = claim(&|c| c.bind == bind) else {
                info!(
                    "{} listener on {} closed (its open connections stay)",
                    l.config.scheme(),
                    l.addr
                );
                continue;
            };
            let Some(c) = wanted.get(i) else { continue };
            // Changed (TLS or WebSocket): the same socket, a new transport.
            let (transport, settings) = match transport(c) {
                Ok(t) => (t, c.clone()),
                Err(e) => {
                    errors.push(format!("{e} (keeping the listener as it was)"));
                    (l.transport, l.config)
                }
            };
            match self.serve_listener(tcp, transport, settings) {
                Ok(n) => kept.push((i, n)),
                Err(e) => errors.push(format!("listener {bind}: {e}")),
            }
        }
        let added: Vec<usize> = (0..wanted.len()).filter(|&i| !claimed[i]).collect();
        for i in added {
            let Some(c) = wanted.get(i) else { continue };
            let started = transport(c).and_then(|t| {
                let tcp = bind_listener(c, config.limits.listen_backlog)?;
                self.serve_listener(tcp, t, c.clone())
            });
            match started {
                Ok(l) => kept.push((i, l)),
                Err(e) => errors.push(format!("{e} (not listening there)")),
            }
        }
        // In the order of the file, as at start.
        kept.sort_by_key(|(i, _)| *i);
        let running: Vec<RunningListener> = kept.into_iter().map(|(_, l)| l).collect();
        config.listeners = running.iter().map(|l| l.config.clone()).collect();
        self.publish_bound(&running);
        r.listeners = running;
    }

    /// Stop the bridges `new` removes or changes, make the declared queues
    /// those of `new` (the bridges' buffers among them), then start the
    /// bridges not running. A link starts after its buffer is declared, so it
    /// never creates it with a subscription's small caps.
    async fn reload_queues_and_bridges(&self, r: &mut Reloadable, new: &Config) -> Vec<String> {
        r.bridges.stop_changed(&new.bridges).await;
        // Links started from now on check topics against the new limits.
        r.bridges.set_topic_limits(new.topic_limits());
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
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound.get().iter().map(|l| l.address).collect()
    }

    /// The configuration the broker runs (after the last reload).
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.get()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Graceful shutdown; returns when the router has stopped.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.shutdown.cancel();
        for l in self.reloadable.into_inner().listeners {
            let _ = l.task.await;
        }
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        ask_router(&self.router_tx, |reply| RouterMsg::Shutdown { reply }).await;
        self.tracker.close();
        let timeout = self.shared.config.get().mqtt.shutdown_timeout;
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            info!(
                "shutdown timeout: {} connections still open",
                self.tracker.len()
            );
        }
        // Every hibernating connection was woken by its kick; any left (a
        // timeout) end here.
        if let Some(h) = &self.shared.hibernation {
            h.close();
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
