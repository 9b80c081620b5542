//! Who may connect and what they may touch: the password file, the ACL file and the
//! failed-login throttle. Pure: the caller reads and writes the files, decides when
//! to reload, and passes time in as `now`.
//!
//! Both files use Mosquitto's formats so an existing gateway's files keep working:
//! passwords as `$6$` (salted SHA-512), `$7$` (PBKDF2-HMAC-SHA512) or `$argon2id$`
//! (the PHC string libargon2 writes, which Mosquitto 2.1 uses); ACLs as
//! `user` / `topic` / `pattern` lines. Everything in the files is untrusted input: a
//! bad line is an error with its line number, never a panic, so a reload with a bad
//! file can keep the old one.
//!
//! This module knows nothing of connections, sessions or the router; `$share/`
//! prefixes are stripped by the caller before `Acl::can_subscribe`.
//!
//! One file per concept: `password.rs`, `acl.rs`, `throttle.rs`.

mod acl;
mod password;
mod throttle;

pub use acl::Acl;
pub use password::{HashMemory, PasswordFile};
pub use throttle::LoginThrottle;

/// A file problem, with its 1-based line number (0 when not line-specific).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct FileError {
    pub line: usize,
    pub message: String,
}

fn file_error(line: usize, message: impl Into<String>) -> FileError {
    FileError {
        line,
        message: message.into(),
    }
}
