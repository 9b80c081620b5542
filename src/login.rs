//! Logins: who a connecting client is. Holds the current password file (swapped
//! on reload), the throttle on repeated failures per address, and the cap on
//! password checks running at once; the decisions themselves are `auth`'s.
//!
//! Shared by every connection task. The password file is a `reload::Swap`
//! only so a reload can swap it: a check clones the `Arc` and works on its own
//! snapshot. The throttle is a small bounded table behind a `Mutex`, touched once
//! per login (not broker state; nothing else reads it). Hash checks (argon2id takes
//! tens of milliseconds) run on the blocking pool, never on a runtime thread.

use crate::auth::{LoginThrottle, PasswordFile};
use crate::config::Config;
use crate::reload::Swap;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
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
}

impl Peer {
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            cert: CertIdentity::NotUsed,
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

/// Read and parse a password file.
pub fn load_password_file(path: &std::path::Path) -> Result<PasswordFile, String> {
    load(path, PasswordFile::parse)
}

/// Read `path` and parse it; errors name the file (and the parser's line).
fn load<T>(
    path: &std::path::Path,
    parse: fn(&str) -> Result<T, crate::auth::FileError>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub struct Logins {
    path: Option<PathBuf>,
    /// Set when there is a password file.
    passwords: Option<Swap<PasswordFile>>,
    anonymous: bool,
    throttle: Mutex<LoginThrottle>,
    checks: Semaphore,
}

impl Logins {
    /// From the config; reads the password file. Err names the file and line.
    pub fn new(config: &Config) -> Result<Logins, String> {
        let path = config.auth.password_file.clone();
        let passwords = match &path {
            Some(p) => Some(Swap::new(Arc::new(load_password_file(p)?))),
            None => None,
        };
        Ok(Logins {
            path,
            passwords,
            anonymous: config.anonymous_allowed(),
            throttle: Mutex::new(LoginThrottle::new(
                config.auth.failed_login_delay,
                config.auth.failed_login_max_delay,
                THROTTLE_FORGET,
                THROTTLE_ENTRIES,
            )),
            checks: Semaphore::new(config.auth.max_concurrent_logins),
        })
    }

    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Re-read the password file (SIGHUP); the new one, if there is a file. On
    /// error the old one stays.
    pub fn reload(&self) -> Result<Option<Arc<PasswordFile>>, String> {
        let (Some(path), Some(passwords)) = (&self.path, &self.passwords) else {
            return Ok(None);
        };
        let fresh = Arc::new(load_password_file(path)?);
        info!(users = fresh.len(), file = %path.display(), "password file reloaded");
        passwords.set(fresh.clone());
        Ok(Some(fresh))
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
        let (Some(user), Some(db)) = (username, self.snapshot()) else {
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
        let wait = {
            let mut t = self.throttle();
            let now = Instant::now();
            let wait = t.delay(ip, now);
            t.failed(ip, now);
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(password) = password.cloned() else {
            return Err(Refused::BadCredentials);
        };
        let ok = {
            // The semaphore is never closed, so acquire fails only if it were.
            let _permit = self
                .checks
                .acquire()
                .await
                .map_err(|_| Refused::NotAuthorized)?;
            let user = user.to_string();
            tokio::task::spawn_blocking(move || db.verify(&user, &password))
                .await
                .unwrap_or(false)
        };
        if ok {
            self.throttle().succeeded(ip);
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
pub fn load_acl(path: &std::path::Path) -> Result<crate::auth::Acl, String> {
    load(path, crate::auth::Acl::parse)
}
