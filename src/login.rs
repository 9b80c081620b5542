//! Logins: who a connecting client is. Holds the current password file (swapped
//! on reload), the throttle on repeated failures per address, and the pool of
//! threads that check passwords; the decisions themselves are `auth`'s.
//!
//! Shared by every connection task. The password file is a `reload::Swap`
//! only so a reload can swap it: a check clones the `Arc` and works on its own
//! snapshot. The throttle is a small bounded table behind a `Mutex`, touched once
//! per login (not broker state; nothing else reads it).
//!
//! Hash checks (argon2id: tens of milliseconds and 19 MiB each) run on
//! `max_concurrent_logins` threads of our own, never on a runtime thread nor on
//! tokio's blocking pool. Each thread keeps one argon2 buffer for good, and a
//! check whose connection gave up (connect_timeout) still runs to its end on its
//! thread, so at most `max_concurrent_logins` hashes ever exist. On the blocking
//! pool a timed-out login released its permit while its hash went on, so the cap
//! bounded nothing: 500 wrong-password clients made hundreds of threads, each with
//! a 19 MiB arena glibc never gave back (19 GB). Checks wait in a queue of
//! `login_queue` places; beyond it a login is refused at once as server busy.

use crate::auth::{FileError, HashMemory, LoginThrottle, PasswordFile};
use crate::config::Config;
use crate::reload::Swap;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Addresses the failure throttle remembers at most (bounded under a spread
/// attack; the oldest are forgotten first).
const THROTTLE_ENTRIES: usize = 4096;
/// A failure is forgotten this long after an address's last one.
const THROTTLE_FORGET: Duration = Duration::from_secs(600);

/// What the TLS layer says about the client, per the listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// The listener does not use certificate identities.
    NotUsed,
    /// `identity_as_username`, but the certificate has no usable Common Name.
    Missing,
    /// `identity_as_username`: the verified certificate's Common Name.
    Name(String),
}

/// The connecting peer as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert: CertIdentity,
    /// A WebSocket's count of what it sent before its CONNECT (opened by the
    /// connection once the CONNECT is read).
    pub gate: Option<std::sync::Arc<crate::ws::PreLoginGate>>,
}

impl Peer {
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            cert: CertIdentity::NotUsed,
            gate: None,
        }
    }
}

/// Why a login was refused (for the CONNACK reason code and the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Wrong password, unknown user, or no password given: v5 0x86.
    BadCredentials,
    /// Anonymous clients are not allowed, or no certificate identity: v5 0x87.
    NotAuthorized,
    /// Every password-check slot is busy and the queue is full: v5 0x89, 3.1.1
    /// 0x03 (server unavailable). Answered at once, without a check.
    ServerBusy,
}

/// Who a CONNECT turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The ACL's `user` and `%u`; None: anonymous.
    pub username: Option<String>,
    /// Verified against the password file (so a reload that removes the user
    /// ends the connection).
    pub by_password: bool,
}

/// A password or ACL file that cannot be used. The text names the file:
/// "PATH: line N: ..." or "PATH: " and the I/O error.
///
/// The inner errors are not marked as sources: their text is already in this
/// one, and a chain printer (a failed start prints `Caused by:`) would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Parse { path: PathBuf, error: FileError },
}

/// Why the logins cannot start.
#[derive(Debug, thiserror::Error)]
pub enum LoginsError {
    #[error(transparent)]
    PasswordFile(#[from] LoadError),
    #[error("cannot start a login thread: {0}")]
    Thread(std::io::Error),
}

/// Read and parse a password file.
pub fn load_password_file(path: &Path) -> Result<PasswordFile, LoadError> {
    load(path, PasswordFile::parse)
}

/// Read `path` and parse it; errors name the file (and the parser's line).
fn load<T>(path: &Path, parse: fn(&str) -> Result<T, FileError>) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text).map_err(|error| LoadError::Parse {
        path: path.to_path_buf(),
        error,
    })
}

/// One password check waiting for a thread.
struct Job {
    db: Arc<PasswordFile>,
    user: String,
    password: Bytes,
    /// Dropped unanswered when the job is pushed out of the queue (busy).
    reply: oneshot::Sender<bool>,
}

/// Waiting checks, best first: ordered by rank (0 for an address a login
/// succeeded from before, else 1 + the failures already counted against it),
/// then by arrival. A returning user goes before strangers, and an address with
/// no recent failures before the addresses that are guessing, so a valid user
/// gets in within about one check's time however many guesses wait (the 500
/// attackers of the issue fail again and again and sink to the back).
struct Waiting {
    jobs: BTreeMap<(u32, u64), Job>,
    next_seq: u64,
    closed: bool,
}

struct PoolShared {
    waiting: Mutex<Waiting>,
    ready: Condvar,
    capacity: usize,
}

impl PoolShared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding it (checks run unlocked); a queue is still
        // a queue after a panic elsewhere.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `max_concurrent_logins` threads fed by a bounded queue.
struct HashPool {
    shared: Arc<PoolShared>,
}

impl HashPool {
    fn new(threads: usize, capacity: usize) -> Result<HashPool, LoginsError> {
        let shared = Arc::new(PoolShared {
            waiting: Mutex::new(Waiting {
                jobs: BTreeMap::new(),
                next_seq: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("tern-login-{i}"))
                // argon2 works in the heap buffer; the stack needs little.
                .stack_size(256 * 1024)
                .spawn(move || hash_thread(&shared))
                .map_err(LoginsError::Thread)?;
        }
        Ok(HashPool { shared })
    }

    /// Queue a check of `rank` (see `Waiting`). Err when the queue is full of
    /// checks at least as deserving (the client is refused at once); a less
    /// deserving one is pushed out instead (its client is refused as busy), and so
    /// are checks nobody waits for.
    fn submit(
        &self,
        rank: u32,
        db: Arc<PasswordFile>,
        user: &str,
        password: Bytes,
    ) -> Result<oneshot::Receiver<bool>, ()> {
        let mut w = self.shared.lock();
        if w.jobs.len() >= self.shared.capacity {
            w.jobs.retain(|_, j| !j.reply.is_closed());
        }
        if w.jobs.len() >= self.shared.capacity {
            match w.jobs.last_key_value() {
                Some((&(worst, _), _)) if worst > rank => {
                    w.jobs.pop_last();
                }
                _ => return Err(()),
            }
        }
        let (tx, rx) = oneshot::channel();
        let seq = w.next_seq;
        w.next_seq += 1;
        let job = Job {
            db,
            user: user.to_string(),
            password,
            reply: tx,
        };
        w.jobs.insert((rank, seq), job);
        drop(w);
        self.shared.ready.notify_one();
        Ok(rx)
    }
}

impl Drop for HashPool {
    /// The threads end after the check they are running (not joined: that can
    /// take up to a second, and this may run on a runtime thread).
    fn drop(&mut self) {
        let mut w = self.shared.lock();
        w.closed = true;
        w.jobs.clear();
        drop(w);
        self.shared.ready.notify_all();
    }
}

fn hash_thread(shared: &PoolShared) {
    // This thread's one argon2 buffer, for every check it ever runs.
    let mut memory = HashMemory::new();
    loop {
        let job = {
            let mut w = shared.lock();
            loop {
                if w.closed {
                    return;
                }
                match w.jobs.pop_first() {
                    // Its connection has gone (connect_timeout): skip the work.
                    Some((_, job)) if job.reply.is_closed() => continue,
                    Some((_, job)) => break job,
                    None => w = shared.ready.wait(w).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        // A bug in a check must not cost the pool a thread: it counts as a failure.
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            job.db.verify_with(&job.user, &job.password, &mut memory)
        }))
        .unwrap_or(false);
        // Nobody may be waiting any more: the answer then goes nowhere.
        let _ = job.reply.send(ok);
    }
}

pub struct Logins {
    path: Option<PathBuf>,
    /// Set when there is a password file.
    passwords: Option<Swap<PasswordFile>>,
    anonymous: bool,
    /// Shared with the `Logins` a reload replaces this one by: an address's
    /// failures are not forgiven by a SIGHUP.
    throttle: Arc<Mutex<LoginThrottle>>,
    /// Set when there is a password file.
    pool: Option<HashPool>,
}

impl Logins {
    /// From the config; reads the password file. Err names the file and line.
    pub fn new(config: &Config) -> Result<Logins, LoginsError> {
        let path = config.auth.password_file.clone();
        let passwords = match &path {
            Some(p) => Some(Swap::new(Arc::new(load_password_file(p)?))),
            None => None,
        };
        let pool = match passwords {
            Some(_) => Some(HashPool::new(
                config.auth.max_concurrent_logins,
                config.auth.login_queue,
            )?),
            None => None,
        };
        Ok(Logins {
            path,
            passwords,
            anonymous: config.anonymous_allowed(),
            throttle: Arc::new(Mutex::new(LoginThrottle::new(
                config.auth.failed_login_delay,
                config.auth.failed_login_max_delay,
                THROTTLE_FORGET,
                THROTTLE_ENTRIES,
            ))),
            pool,
        })
    }

    /// Keep `old`'s failure counts (a reload built this one from a new
    /// `[auth]`), with this one's delays.
    pub fn keep_failures_of(mut self, old: &Logins) -> Logins {
        let (base, max) = {
            let t = self.throttle();
            (t.base_delay(), t.max_delay())
        };
        self.throttle = old.throttle.clone();
        self.throttle().set_delays(base, max);
        self
    }

    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Re-read the password file (SIGHUP); the new one, if there is a file. On
    /// error the old one stays.
    pub fn reload(&self) -> Result<Option<Arc<PasswordFile>>, LoadError> {
        let (Some(path), Some(passwords)) = (&self.path, &self.passwords) else {
            return Ok(None);
        };
        let fresh = Arc::new(load_password_file(path)?);
        info!(users = fresh.len(), file = %path.display(), "password file reloaded");
        passwords.set(fresh.clone());
        Ok(Some(fresh))
    }

    /// The password file as loaded, if there is one.
    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.snapshot()
    }

    fn snapshot(&self) -> Option<Arc<PasswordFile>> {
        self.passwords.as_ref().map(Swap::get)
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        // A panic while holding this lock leaves a table of counters: still usable.
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decide a CONNECT's identity: Ok(username for the ACL, None when anonymous).
    /// Repeated failures from one address are slowed down before the check.
    pub async fn check(
        &self,
        peer: &Peer,
        username: Option<&str>,
        password: Option<&Bytes>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Login, Refused> {
        let result = self.decide(peer, username, password).await;
        if let Err(why) = result {
            metrics.logins_refused.fetch_add(1, Ordering::Relaxed);
            // Never the password [convention 11]; the username helps the operator.
            warn!(peer = %peer.addr, username = username.unwrap_or(""), reason = ?why, "login refused");
        }
        result
    }

    async fn decide(
        &self,
        peer: &Peer,
        username: Option<&str>,
        password: Option<&Bytes>,
    ) -> Result<Login, Refused> {
        let unchecked = |username: Option<&str>| Login {
            username: username.map(str::to_string),
            by_password: false,
        };
        match &peer.cert {
            // The certificate was verified against client_ca: it is the identity,
            // and CONNECT's username and password are not looked at (Mosquitto's
            // use_identity_as_username).
            CertIdentity::Name(cn) => return Ok(unchecked(Some(cn))),
            CertIdentity::Missing => return Err(Refused::NotAuthorized),
            CertIdentity::NotUsed => {}
        }
        let ip = peer.addr.ip();
        let (Some(user), Some(db), Some(pool)) = (username, self.snapshot(), &self.pool) else {
            // No password file: a username is taken as given (it still selects
            // the ACL rules), as Mosquitto does; either way the client is not
            // verified, so it needs allow_anonymous.
            return if self.anonymous {
                Ok(unchecked(username))
            } else {
                Err(Refused::NotAuthorized)
            };
        };
        // A password attempt counts as a failure from the moment it arrives,
        // under the same lock as its delay, and a success takes back only its
        // own count: counting only after the check would give every attempt
        // already in flight the same delay, so parallel connections would escape
        // the doubling.
        let (wait, rank) = {
            let mut t = self.throttle();
            let now = Instant::now();
            let wait = t.delay(ip, now);
            // Queue rank: addresses that logged in before go first, then by
            // fewest failures, so a storm from fresh addresses cannot push out
            // the users who come back.
            let rank = if t.known(ip) {
                0
            } else {
                t.failures(ip, now).saturating_add(1)
            };
            t.failed(ip, now);
            (wait, rank)
        };
        // The delay comes before the queue: a throttled client holds no place.
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(password) = password.cloned() else {
            return Err(Refused::BadCredentials);
        };
        // A busy refusal stays counted as a failure: retrying at once must not
        // keep an address at the front of the queue.
        let answer = pool
            .submit(rank, db, user, password)
            .map_err(|()| Refused::ServerBusy)?;
        // Closed unanswered: pushed out of the queue by a more deserving login.
        let ok = answer.await.map_err(|_| Refused::ServerBusy)?;
        if ok {
            self.throttle().succeeded(ip, Instant::now());
            Ok(Login {
                username: Some(user.to_string()),
                by_password: true,
            })
        } else {
            Err(Refused::BadCredentials)
        }
    }
}

/// Read and parse an ACL file.
pub fn load_acl(path: &Path) -> Result<crate::auth::Acl, LoadError> {
    load(path, crate::auth::Acl::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Arc<PasswordFile> {
        Arc::new(PasswordFile::new())
    }

    fn keys(pool: &HashPool) -> Vec<u32> {
        pool.shared.lock().jobs.keys().map(|k| k.0).collect()
    }

    #[test]
    fn queue_is_bounded_best_first_and_pushes_out_the_worst() {
        // No threads: jobs stay queued.
        let pool = HashPool::new(0, 3).unwrap();
        let mut a = pool.submit(5, db(), "a", Bytes::new()).unwrap();
        let _b = pool.submit(2, db(), "b", Bytes::new()).unwrap();
        let _c = pool.submit(5, db(), "c", Bytes::new()).unwrap();
        assert_eq!(keys(&pool), [2, 5, 5]);
        // Full: as many failures as the worst waiting is refused...
        assert!(pool.submit(5, db(), "d", Bytes::new()).is_err());
        // ... fewer push the worst out; of equals, the last to come (c).
        let _e = pool.submit(0, db(), "e", Bytes::new()).unwrap();
        assert_eq!(keys(&pool), [0, 2, 5]);
        assert!(a
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        // A check nobody waits for any more makes room.
        drop(a);
        let _f = pool.submit(9, db(), "f", Bytes::new()).unwrap();
        assert_eq!(keys(&pool), [0, 2, 9]);
    }

    #[test]
    fn threads_answer_and_skip_abandoned_checks() {
        let mut f = PasswordFile::new();
        f.set("u", b"pw").unwrap();
        let f = Arc::new(f);
        let pool = HashPool::new(1, 8).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let abandoned = pool.submit(0, f.clone(), "u", Bytes::from("pw")).unwrap();
            drop(abandoned);
            let good = pool.submit(0, f.clone(), "u", Bytes::from("pw")).unwrap();
            let bad = pool.submit(1, f.clone(), "u", Bytes::from("no")).unwrap();
            assert_eq!(good.await, Ok(true));
            assert_eq!(bad.await, Ok(false));
        });
        assert!(keys(&pool).is_empty());
    }

    /// The text of a load error names the file, then the I/O error or the line.
    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        let e = load_password_file(&missing).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }));
        let io = std::fs::read_to_string(&missing).unwrap_err();
        assert_eq!(e.to_string(), format!("{}: {io}", missing.display()));
        let bad = dir.path().join("passwd");
        std::fs::write(&bad, "no colon\n").unwrap();
        let e = load_password_file(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: line 1: expected username:hash", bad.display())
        );
        // Logins that cannot start say the same.
        let config = Config {
            auth: crate::config::AuthConfig {
                password_file: Some(bad.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Logins::new(&config).err().map(|e| e.to_string());
        assert_eq!(
            e,
            Some(format!("{}: line 1: expected username:hash", bad.display()))
        );
        std::fs::write(&bad, "topic nowhere x\n").unwrap();
        let e = load_acl(&bad).unwrap_err();
        assert!(matches!(e, LoadError::Parse { .. }));
        assert!(e
            .to_string()
            .starts_with(&format!("{}: line 1: ", bad.display())));
    }
}
