//! Mosquitto password files: parse, verify `$6$` / `$7$` / argon2id entries in
//! constant time (an unknown user costs the same as a known one), write argon2id.
//! Pure: the caller reads and writes the file.

use std::fmt;
use std::num::NonZeroU32;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ring::rand::SecureRandom as _;

use crate::hash::Map;

use super::{file_error, FileError};

/// SHA-512's output length: the hash length of `$6$` and `$7$` entries.
const SHA512_LEN: usize = 64;

/// A `$7$` entry may ask for at most this many PBKDF2 rounds. Mosquitto writes 101;
/// without a cap one line could make every login of that user (and every login of
/// an unknown user, see `PasswordFile::decoy`) take minutes.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// An argon2id entry may use at most 256 MiB per verification (m is in KiB). A
/// gateway has little memory and verifies logins one CONNECT at a time.
const MAX_ARGON2_M_KIB: u32 = 256 * 1024;

/// ... and at most 1 GiB of memory passes (m * t), about a second on a gateway
/// CPU, so a large t cannot stall logins either.
const MAX_ARGON2_WORK_KIB: u64 = 1024 * 1024;

/// Salt and tag lengths accepted in argon2id entries. libargon2 allows 8-byte
/// salts and 4-byte tags; Mosquitto 2.1 writes 64 of each, `set` writes 16 and 32.
/// The caps keep a line from holding megabytes.
const ARGON2_SALT_LEN: std::ops::RangeInclusive<usize> = 8..=256;
const ARGON2_TAG_LEN: std::ops::RangeInclusive<usize> = 4..=64;

/// What `set` writes: OWASP's minimum argon2id cost (19 MiB, 2 passes, 1 lane).
/// The gateway verifies one password per CONNECT (and the throttle slows guessing),
/// so this cost is bounded by the connection rate, while a stolen file costs an
/// attacker the same 19 MiB per guess.
const SET_M_KIB: u32 = 19 * 1024;
const SET_T: u32 = 2;
const SET_P: u32 = 1;
const SET_SALT_LEN: usize = 16;
const SET_TAG_LEN: usize = 32;

/// One decoded password hash.
#[derive(Clone)]
enum Hash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations), 64 bytes.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// `$argon2id$v=..$m=..,t=..,p=..$salt$tag`.
    Argon2id {
        version: Version,
        params: Params,
        salt: Vec<u8>,
        tag: Vec<u8>,
    },
}

/// Compare in time that depends only on the lengths (which come from the file, not
/// from the peer), so a guess does not learn how many leading bytes were right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// The shape of an argon2id entry after `$argon2id$`, for its error message.
const ARGON2_SHAPE: &str =
    "argon2id hash needs $v=<version>$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>";

/// Why a password hash cannot be used. The text follows "line N: " in a
/// `FileError`, as operators have read it so far.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum HashError {
    #[error("unsupported hash: expected $6$, $7$ or $argon2id$")]
    Unsupported,
    #[error("$6$ hash needs $<salt>$<hash>")]
    Sha512Shape,
    #[error("$7$ hash needs $<iterations>$<salt>$<hash>")]
    Pbkdf2Shape,
    #[error("salt is not valid base64")]
    SaltBase64,
    #[error("salt is {0} bytes, expected 12 or 64")]
    SaltLength(usize),
    #[error("hash is not valid base64")]
    HashBase64,
    #[error("hash is {0} bytes, expected {len}", len = SHA512_LEN)]
    HashLength(usize),
    #[error("iterations must be a whole number of at least 1")]
    Iterations,
    #[error("{0} iterations is more than the {max} allowed", max = MAX_PBKDF2_ITERATIONS)]
    TooManyIterations(NonZeroU32),
    #[error("{shape}", shape = ARGON2_SHAPE)]
    Argon2Shape,
    #[error("argon2id version must be v=19 or v=16")]
    Argon2Version,
    #[error("argon2id m={0} KiB is more than the {max} allowed", max = MAX_ARGON2_M_KIB)]
    Argon2Memory(u32),
    #[error("argon2id m*t = {0} KiB is more than the {max} allowed", max = MAX_ARGON2_WORK_KIB)]
    Argon2Work(u64),
    #[error("argon2id salt is not valid unpadded base64")]
    Argon2SaltBase64,
    #[error("argon2id salt is {0} bytes")]
    Argon2SaltLength(usize),
    #[error("argon2id hash is not valid unpadded base64")]
    Argon2TagBase64,
    #[error("argon2id hash is {0} bytes")]
    Argon2TagLength(usize),
    #[error("argon2id parameters: {0}")]
    Argon2Params(argon2::Error),
}

impl Hash {
    fn parse(s: &str) -> Result<Hash, HashError> {
        if let Some(rest) = s.strip_prefix("$6$") {
            let (salt, hash) = rest.split_once('$').ok_or(HashError::Sha512Shape)?;
            Ok(Hash::Sha512 {
                salt: mosquitto_salt(salt)?,
                hash: sha512_hash(hash)?,
            })
        } else if let Some(rest) = s.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(HashError::Pbkdf2Shape);
            };
            Ok(Hash::Pbkdf2 {
                iterations: pbkdf2_iterations(iterations)?,
                salt: mosquitto_salt(salt)?,
                hash: sha512_hash(hash)?,
            })
        } else if let Some(rest) = s.strip_prefix("$argon2id$") {
            parse_argon2id(rest)
        } else {
            Err(HashError::Unsupported)
        }
    }

    fn verify(&self, password: &[u8], memory: &mut HashMemory) -> bool {
        match self {
            Hash::Sha512 { salt, hash } => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                ct_eq(ctx.finish().as_ref(), hash)
            }
            // ring compares in constant time.
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Hash::Argon2id {
                version,
                params,
                salt,
                tag,
            } => {
                let argon = Argon2::new(Algorithm::Argon2id, *version, params.clone());
                let mut out = [0u8; 64];
                let Some(out) = out.get_mut(..tag.len()) else {
                    return false;
                };
                // No memory (out of it): no login.
                let Some(blocks) = memory.blocks(params.block_count()) else {
                    return false;
                };
                // Fails only for inputs `parse` already refused: no login.
                argon
                    .hash_password_into_with_memory(password, salt, out, blocks)
                    .is_ok()
                    && ct_eq(out, tag)
            }
        }
    }

    /// The same scheme and cost with a hash no password produces: checking a
    /// password against it takes as long as against the real one and fails.
    fn decoy(&self) -> Hash {
        let mut d = self.clone();
        match &mut d {
            Hash::Sha512 { hash, .. } | Hash::Pbkdf2 { hash, .. } => *hash = [0; SHA512_LEN],
            Hash::Argon2id { tag, .. } => tag.iter_mut().for_each(|b| *b = 0),
        }
        d
    }

    /// Entries with equal keys take the same time to check.
    fn cost_key(&self) -> (u8, u32, u32, u32) {
        match self {
            Hash::Sha512 { .. } => (6, 0, 0, 0),
            Hash::Pbkdf2 { iterations, .. } => (7, iterations.get(), 0, 0),
            Hash::Argon2id { params, .. } => (8, params.m_cost(), params.t_cost(), params.p_cost()),
        }
    }
}

/// The working memory of argon2id checks (m KiB each), owned by the caller and
/// reused from one check to the next. Allocating it per check is what let memory
/// grow without bound: glibc keeps a freed 19 MiB block in the arena of the
/// thread that freed it, so every blocking-pool thread that once hashed kept its
/// own. One `HashMemory` per hashing thread bounds it at threads x largest m.
#[derive(Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    pub fn new() -> HashMemory {
        HashMemory::default()
    }

    /// The first `n` blocks, growing the buffer to `n` if it is smaller (it never
    /// shrinks: the next check of the same file needs the same size again). None
    /// if the memory cannot be had.
    fn blocks(&mut self, n: usize) -> Option<&mut [Block]> {
        if let Some(more) = n.checked_sub(self.blocks.len()).filter(|m| *m > 0) {
            self.blocks.try_reserve_exact(more).ok()?;
            self.blocks.resize(n, Block::new());
        }
        self.blocks.get_mut(..n)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.capacity() * Block::SIZE
    }
}

/// Mosquitto's salts are 12 bytes; 64 is accepted too (the size of its salt buffer).
fn mosquitto_salt(b64: &str) -> Result<Vec<u8>, HashError> {
    let salt = STANDARD.decode(b64).map_err(|_| HashError::SaltBase64)?;
    if salt.len() != 12 && salt.len() != 64 {
        return Err(HashError::SaltLength(salt.len()));
    }
    Ok(salt)
}

fn sha512_hash(b64: &str) -> Result<[u8; SHA512_LEN], HashError> {
    let bytes = STANDARD.decode(b64).map_err(|_| HashError::HashBase64)?;
    <[u8; SHA512_LEN]>::try_from(bytes.as_slice()).map_err(|_| HashError::HashLength(bytes.len()))
}

fn decimal(s: &str) -> Option<u32> {
    // `u32::from_str` also takes a leading '+'; the formats have plain digits only.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn pbkdf2_iterations(s: &str) -> Result<NonZeroU32, HashError> {
    let n = decimal(s)
        .and_then(NonZeroU32::new)
        .ok_or(HashError::Iterations)?;
    if n.get() > MAX_PBKDF2_ITERATIONS {
        return Err(HashError::TooManyIterations(n));
    }
    Ok(n)
}

/// Parse what follows `$argon2id$`: `v=19$m=..,t=..,p=..$<salt>$<tag>`, salt and tag
/// in unpadded base64, the parameters in libargon2's order. Parsed here rather than
/// with `argon2`'s PHC type because that caps salts at 48 bytes and Mosquitto 2.1
/// writes 64.
fn parse_argon2id(rest: &str) -> Result<Hash, HashError> {
    let mut fields = rest.split('$');
    let (Some(version), Some(params), Some(salt), Some(tag), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(HashError::Argon2Shape);
    };
    let version = match version {
        "v=19" => Version::V0x13,
        "v=16" => Version::V0x10,
        _ => return Err(HashError::Argon2Version),
    };
    let mut kv = params.split(',');
    let (Some(m), Some(t), Some(p), None) = (kv.next(), kv.next(), kv.next(), kv.next()) else {
        return Err(HashError::Argon2Shape);
    };
    let value = |field: &str, name: &str| -> Result<u32, HashError> {
        field
            .strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .and_then(decimal)
            .ok_or(HashError::Argon2Shape)
    };
    let (m, t, p) = (value(m, "m")?, value(t, "t")?, value(p, "p")?);
    if m > MAX_ARGON2_M_KIB {
        return Err(HashError::Argon2Memory(m));
    }
    let work = u64::from(m) * u64::from(t);
    if work > MAX_ARGON2_WORK_KIB {
        return Err(HashError::Argon2Work(work));
    }
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .map_err(|_| HashError::Argon2SaltBase64)?;
    if !ARGON2_SALT_LEN.contains(&salt.len()) {
        return Err(HashError::Argon2SaltLength(salt.len()));
    }
    let tag = STANDARD_NO_PAD
        .decode(tag)
        .map_err(|_| HashError::Argon2TagBase64)?;
    if !ARGON2_TAG_LEN.contains(&tag.len()) {
        return Err(HashError::Argon2TagLength(tag.len()));
    }
    // The crate checks the rest (t >= 1, 1 <= p, m >= 8 * p).
    let params = Params::new(m, t, p, Some(tag.len())).map_err(HashError::Argon2Params)?;
    Ok(Hash::Argon2id {
        version,
        params,
        salt,
        tag,
    })
}

/// A user's hash, and its text as it appears in the file.
struct Entry {
    hash: Hash,
    text: String,
}

enum Line {
    /// A comment or blank line, kept verbatim (without its line end).
    Other(String),
    /// `username:hash`; the hash lives in `PasswordFile::users`.
    User(String),
}

/// A Mosquitto password file: `username:hash` lines.
///
/// Every line is kept in order, so `to_text` after `set` / `remove` rewrites the
/// file with its comments where they were.
pub struct PasswordFile {
    lines: Vec<Line>,
    users: Map<String, Entry>,
    /// Checked instead of a hash when the username is unknown, so the time of a
    /// failed login does not tell which usernames exist. It has the cost of the
    /// most common kind of entry in the file, so it stays comparable when the
    /// file is all `$7$` (fast) or all argon2id (slow).
    decoy: Hash,
}

impl fmt::Debug for PasswordFile {
    // Hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Default for PasswordFile {
    fn default() -> Self {
        PasswordFile::new()
    }
}

/// The decoy of an empty file: what `set` would write.
fn default_decoy() -> Hash {
    match Params::new(SET_M_KIB, SET_T, SET_P, Some(SET_TAG_LEN)) {
        Ok(params) => Hash::Argon2id {
            version: Version::V0x13,
            params,
            salt: vec![0; SET_SALT_LEN],
            tag: vec![0; SET_TAG_LEN],
        },
        // INVARIANT: the constants are valid argon2 parameters (a unit test checks);
        // this arm only keeps the code free of `expect`.
        Err(_) => Hash::Sha512 {
            salt: vec![0; 12],
            hash: [0; SHA512_LEN],
        },
    }
}

/// Usernames `set` refuses because the file could not hold them: ':' ends the
/// username, line ends end the line, a leading '#' makes a comment, and `parse`
/// trims surrounding whitespace.
fn check_new_username(username: &str) -> Result<(), FileError> {
    if username.is_empty() {
        return Err(file_error(0, "empty username"));
    }
    if username.contains(':') {
        return Err(file_error(0, "a username cannot contain ':'"));
    }
    if username.chars().any(char::is_control) {
        return Err(file_error(
            0,
            "a username cannot contain control characters",
        ));
    }
    if username.trim() != username {
        return Err(file_error(
            0,
            "a username cannot start or end with whitespace",
        ));
    }
    if username.starts_with('#') {
        return Err(file_error(0, "a username cannot start with '#'"));
    }
    Ok(())
}

impl PasswordFile {
    /// An empty file (no users).
    pub fn new() -> PasswordFile {
        PasswordFile {
            lines: Vec::new(),
            users: Map::default(),
            decoy: default_decoy(),
        }
    }

    /// Parse a whole file. Any bad line fails the whole parse, so a reload with a
    /// broken file keeps the old users instead of silently losing some.
    ///
    /// The username and hash are trimmed of surrounding whitespace. A username
    /// that appears twice is an error (naming both lines): which of two hashes an
    /// operator meant is not ours to guess.
    pub fn parse(text: &str) -> Result<PasswordFile, FileError> {
        let mut file = PasswordFile::new();
        let mut first_line: Map<String, usize> = Map::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            // `lines` has already removed "\n" and one "\r" before it.
            let line = raw.trim_end();
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                file.lines.push(Line::Other(line.to_string()));
                continue;
            }
            let (username, hash) = content
                .split_once(':')
                .ok_or_else(|| file_error(n, "expected username:hash"))?;
            let (username, hash) = (username.trim(), hash.trim());
            if username.is_empty() {
                return Err(file_error(n, "empty username"));
            }
            if let Some(first) = first_line.get(username) {
                return Err(file_error(
                    n,
                    format!("user '{username}' is already defined on line {first}"),
                ));
            }
            let parsed = Hash::parse(hash).map_err(|e| file_error(n, e.to_string()))?;
            first_line.insert(username.to_string(), n);
            file.users.insert(
                username.to_string(),
                Entry {
                    hash: parsed,
                    text: hash.to_string(),
                },
            );
            file.lines.push(Line::User(username.to_string()));
        }
        file.refresh_decoy();
        Ok(file)
    }

    /// Is `password` right for `username`? An unknown username costs about as much
    /// as a known one, and is false.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.verify_with(username, password, &mut HashMemory::new())
    }

    /// `verify` with argon2id's working memory from `memory` (the decoy uses it
    /// too, so an unknown user costs the same memory and time as a known one).
    pub fn verify_with(&self, username: &str, password: &[u8], memory: &mut HashMemory) -> bool {
        match self.users.get(username) {
            Some(entry) => entry.hash.verify(password, memory),
            None => {
                std::hint::black_box(self.decoy.verify(password, memory));
                false
            }
        }
    }

    /// Add `username` or replace its password (in place, keeping its line), hashed
    /// with argon2id and a fresh random salt.
    pub fn set(&mut self, username: &str, password: &[u8]) -> Result<(), FileError> {
        check_new_username(username)?;
        let mut salt = [0u8; SET_SALT_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| file_error(0, "the system random generator failed"))?;
        let params = Params::new(SET_M_KIB, SET_T, SET_P, Some(SET_TAG_LEN))
            .map_err(|e| file_error(0, format!("argon2id parameters: {e}")))?;
        let mut tag = [0u8; SET_TAG_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into(password, &salt, &mut tag)
            .map_err(|e| file_error(0, format!("argon2id: {e}")))?;
        let text = format!(
            "$argon2id$v=19$m={SET_M_KIB},t={SET_T},p={SET_P}${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(tag)
        );
        let entry = Entry {
            hash: Hash::Argon2id {
                version: Version::V0x13,
                params,
                salt: salt.to_vec(),
                tag: tag.to_vec(),
            },
            text,
        };
        if self.users.insert(username.to_string(), entry).is_none() {
            self.lines.push(Line::User(username.to_string()));
        }
        self.refresh_decoy();
        Ok(())
    }

    /// Remove `username`; true when it existed.
    pub fn remove(&mut self, username: &str) -> bool {
        if self.users.remove(username).is_none() {
            return false;
        }
        self.lines
            .retain(|l| !matches!(l, Line::User(u) if u == username));
        self.refresh_decoy();
        true
    }

    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file, ready to write: every line in order, '\n' line ends.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(s) => out.push_str(s),
                Line::User(u) => {
                    out.push_str(u);
                    out.push(':');
                    // Always present: `lines` and `users` change together.
                    if let Some(e) = self.users.get(u) {
                        out.push_str(&e.text);
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    /// Pick the decoy: the most common cost among the entries (first in file order
    /// on a tie), or what `set` writes when there are none.
    fn refresh_decoy(&mut self) {
        let mut counts: Map<(u8, u32, u32, u32), usize> = Map::default();
        let mut best: Option<(&Hash, usize)> = None;
        for line in &self.lines {
            let Line::User(u) = line else { continue };
            let Some(entry) = self.users.get(u) else {
                continue;
            };
            let count = counts.entry(entry.hash.cost_key()).or_insert(0);
            *count += 1;
            if best.is_none_or(|(_, c)| *count > c) {
                best = Some((&entry.hash, *count));
            }
        }
        self.decoy = best.map_or_else(default_decoy, |(h, _)| h.decoy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// python3: pw = b"tern-pw"; salt = bytes(range(12));
    /// hashlib.sha512(pw + salt), standard base64.
    const SHA512_VECTOR: &str = "$6$AAECAwQFBgcICQoL$15MvHxUfRBT6nzbxX/YKq3imKFYjtgtD9ib7IL5RAkuvPnia/Y3uHtRPIYsj2oOJEGX8wN6YBJyjZE+PblYiKA==";

    /// python3: hashlib.pbkdf2_hmac('sha512', b"tern-pw", bytes(range(100, 164)), 101),
    /// a 64-byte salt.
    const PBKDF2_VECTOR: &str = "$7$101$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKTlJWWl5iZmpucnZ6foKGiow==$r8gB0IhKJJakOCC/5U2q9ceftQwJTmlRMUzG1tElPiuW9mxN8/2BjELA2kEEMVikAiqq+jElRfsg2HdDwGv9zw==";

    /// python3: hashlib.pbkdf2_hmac('sha512', b"\x00\xffbin", bytes(range(12)), 1):
    /// a binary password and a single iteration.
    const PBKDF2_BINARY: &str = "$7$1$AAECAwQFBgcICQoL$mXPbbWp1kKNV6DL7qMu1N6ayCFdwwBJQmUw/M9JRiUnZ6iFtqmPiLc9BzxLltRiDn7hxQ2iEJDb7L3vo/swENA==";

    /// Written by Mosquitto 2.0.11's own tool:
    /// `mosquitto_passwd -c -b pw alice secret; mosquitto_passwd -b pw bob hunter2;
    /// mosquitto_passwd -H sha512 -b pw carol 'pa:ss'`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$SEfXSkxSi7wplhIu$af0yYXoT34TLnT6Yb5UWFu9junSbxOvVyYQ/IuC7ncbsKTO7n4Wxob3HCApgH7n2Nc8heymw0fRotLubFzUNpg==
bob:$7$101$NL8TWkLippw3tbHb$0BCw6Un4baenegw2rYhnLD2hnL+ZtJ9VbIG8un53TJ0Ob1QNFRWo6NYiTyMG6JPXxZyEdt5sJiNOi47o7cuQFw==
carol:$6$beaGLMJ9fP9SyF1D$85ZG0ZdqZgsyabutF/+wm46NiWS9V580r955Gd6xl72/S8Z7Rrg6mR3fycfO8upilt3rzom9wBz7k0pe/mKutw==
";

    /// libargon2 (`argon2id_hash_encoded` through python3 ctypes) with a 64-byte
    /// salt and a 64-byte hash, the sizes Mosquitto 2.1 writes; password
    /// "mosquitto-2.1", m=4096, t=2, p=1.
    const ARGON2_MOSQUITTO_SIZES: &str = "$argon2id$v=19$m=4096,t=2,p=1$AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dzj6vH4/wYNFBsiKTA3PkVMU1phaG92fYSLkpmgp661vA$Ffjqm1CfPoAJ+gpjJGA4OLmrTDXLLDGhENVuVoh0ccguHdKnYomIU5PC2fiaxx9Kqqf1RgyambYMD8ngv1p4NQ";

    /// libargon2 again: password b"\x00\xff\x01", salt "0123456789abcdef",
    /// m=64, t=1, p=2, 32-byte hash.
    const ARGON2_TWO_LANES: &str = "$argon2id$v=19$m=64,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg$UMRTe1o1qafAaAWtTh1NG/rJA6JposNRitN1xhD8+d4";

    fn file(text: &str) -> PasswordFile {
        match PasswordFile::parse(text) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sha512_vector() {
        let f = file(&format!("u:{SHA512_VECTOR}\n"));
        assert!(f.verify("u", b"tern-pw"));
        assert!(!f.verify("u", b"tern-pw "));
        assert!(!f.verify("u", b""));
    }

    #[test]
    fn pbkdf2_vectors() {
        let f = file(&format!("u:{PBKDF2_VECTOR}\nbin:{PBKDF2_BINARY}\n"));
        assert!(f.verify("u", b"tern-pw"));
        assert!(!f.verify("u", b"tern-pW"));
        assert!(f.verify("bin", b"\x00\xffbin"));
        assert!(!f.verify("bin", b"\x00\xffbi"));
        // A password is checked against its own user only.
        assert!(!f.verify("bin", b"tern-pw"));
    }

    #[test]
    fn real_mosquitto_passwd_file() {
        let f = file(MOSQUITTO_FILE);
        assert_eq!(f.len(), 3);
        assert!(f.verify("alice", b"secret"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(f.verify("carol", b"pa:ss"));
        assert!(!f.verify("alice", b"hunter2"));
        assert!(!f.verify("carol", b"pa"));
        assert_eq!(f.to_text(), MOSQUITTO_FILE);
    }

    #[test]
    fn libargon2_vectors() {
        let f = file(&format!(
            "m:{ARGON2_MOSQUITTO_SIZES}\np:{ARGON2_TWO_LANES}\n"
        ));
        assert!(f.verify("m", b"mosquitto-2.1"));
        assert!(!f.verify("m", b"mosquitto-2.0"));
        assert!(f.verify("p", b"\x00\xff\x01"));
        assert!(!f.verify("p", b"\x00\xff\x02"));
    }

    #[test]
    fn set_params_are_valid() {
        // `default_decoy` relies on this.
        assert!(Params::new(SET_M_KIB, SET_T, SET_P, Some(SET_TAG_LEN)).is_ok());
        assert!(matches!(default_decoy(), Hash::Argon2id { .. }));
    }

    #[test]
    fn set_writes_argon2id_and_round_trips() {
        let mut f = PasswordFile::new();
        assert!(f.is_empty());
        assert_eq!(f.set("dave", b"\x00binary\xff"), Ok(()));
        assert!(f.contains("dave"));
        assert_eq!(f.len(), 1);
        let text = f.to_text();
        assert!(
            text.starts_with("dave:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let reread = file(&text);
        assert!(reread.verify("dave", b"\x00binary\xff"));
        assert!(!reread.verify("dave", b"\x00binary"));
    }

    #[test]
    fn set_replaces_in_place_and_salts_afresh() {
        let mut f = file(&format!("# users\na:{SHA512_VECTOR}\nb:{PBKDF2_BINARY}\n"));
        assert_eq!(f.set("a", b"new"), Ok(()));
        let first = f.to_text();
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "# users");
        assert!(lines[1].starts_with("a:$argon2id$"));
        assert_eq!(lines[2], format!("b:{PBKDF2_BINARY}"));
        assert!(f.verify("a", b"new"));
        assert!(!f.verify("a", b"tern-pw"));
        assert_eq!(f.len(), 2);
        // Same password again: a new random salt, so a different line.
        assert_eq!(f.set("a", b"new"), Ok(()));
        assert_ne!(f.to_text(), first);
    }

    #[test]
    fn set_refuses_usernames_the_file_cannot_hold() {
        let mut f = PasswordFile::new();
        for bad in ["", "a:b", "a\nb", "a\rb", " a", "a ", "#a", "a\tb"] {
            let err = f.set(bad, b"pw").err();
            assert!(err.is_some_and(|e| e.line == 0), "{bad:?}");
        }
        assert!(f.is_empty());
    }

    #[test]
    fn unknown_user_and_wrong_password_fail() {
        let f = file(MOSQUITTO_FILE);
        assert!(!f.verify("mallory", b"secret"));
        assert!(!f.verify("", b""));
        assert!(!f.verify("Alice", b"secret"));
        assert!(!PasswordFile::new().verify("alice", b"secret"));
    }

    #[test]
    fn unknown_users_are_checked_against_a_decoy_of_the_usual_cost() {
        let f = file(MOSQUITTO_FILE);
        // Two $7$ 101-round entries against one $6$: the decoy is $7$ with 101
        // rounds, whose hash matches nobody.
        assert_eq!(f.decoy.cost_key(), (7, 101, 0, 0));
        assert!(!f.decoy.verify(b"secret", &mut HashMemory::new()));
        assert_eq!(
            PasswordFile::new().decoy.cost_key(),
            (8, SET_M_KIB, SET_T, SET_P)
        );
        let f = file(&format!("m:{ARGON2_MOSQUITTO_SIZES}\n"));
        assert_eq!(f.decoy.cost_key(), (8, 4096, 2, 1));
        assert!(!f.decoy.verify(b"mosquitto-2.1", &mut HashMemory::new()));
        assert!(!f.verify("x", b"mosquitto-2.1"));
        let mut f = file(&format!("s:{SHA512_VECTOR}\n"));
        assert_eq!(f.decoy.cost_key(), (6, 0, 0, 0));
        assert!(f.remove("s"));
        assert_eq!(f.decoy.cost_key(), (8, SET_M_KIB, SET_T, SET_P));
    }

    #[test]
    fn remove_user() {
        let mut f = file(MOSQUITTO_FILE);
        assert!(f.remove("bob"));
        assert!(!f.remove("bob"));
        assert!(!f.contains("bob"));
        assert!(!f.verify("bob", b"hunter2"));
        assert!(f.verify("alice", b"secret"));
        assert_eq!(f.len(), 2);
        let text = f.to_text();
        assert!(!text.contains("bob:"));
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn to_text_keeps_comments_blanks_and_order() {
        let input = format!(
            "# Gateway users\r\n\r\n  # indented comment   \nzed:{SHA512_VECTOR}   \r\n\nalpha : {PBKDF2_BINARY}\n# end"
        );
        let f = file(&input);
        assert!(f.verify("zed", b"tern-pw"));
        assert!(f.verify("alpha", b"\x00\xffbin"));
        assert_eq!(
            f.to_text(),
            format!(
                "# Gateway users\n\n  # indented comment\nzed:{SHA512_VECTOR}\n\nalpha:{PBKDF2_BINARY}\n# end\n"
            )
        );
        assert_eq!(file("").to_text(), "");
    }

    #[test]
    fn malformed_lines_report_their_line_number() {
        let good = format!("ok:{SHA512_VECTOR}");
        let salt12 = "AAECAwQFBgcICQoL";
        let hash64 = "15MvHxUfRBT6nzbxX/YKq3imKFYjtgtD9ib7IL5RAkuvPnia/Y3uHtRPIYsj2oOJEGX8wN6YBJyjZE+PblYiKA==";
        let argon_tail = "MDEyMzQ1Njc4OWFiY2RlZg$UMRTe1o1qafAaAWtTh1NG/rJA6JposNRitN1xhD8+d4";
        let cases: Vec<(String, &str)> = vec![
            ("no colon here".into(), "expected username:hash"),
            (format!(":{SHA512_VECTOR}"), "empty username"),
            (format!("  :{SHA512_VECTOR}"), "empty username"),
            ("u:".into(), "unsupported hash"),
            ("u:plaintext".into(), "unsupported hash"),
            ("u:$5$abc$def".into(), "unsupported hash"),
            ("u:$6$onlyone".into(), "$6$ hash needs"),
            (format!("u:$6$!!!!${hash64}"), "salt is not valid base64"),
            (
                format!("u:$6$AAECAwQFBgcICQ==${hash64}"),
                "salt is 10 bytes",
            ),
            (format!("u:$6${salt12}$AAAA"), "hash is 3 bytes"),
            (format!("u:$6${salt12}$@@@@"), "hash is not valid base64"),
            // Mosquitto writes padding; a hash without it is refused.
            (
                format!("u:$6${salt12}${}", hash64.trim_end_matches('=')),
                "hash is not valid base64",
            ),
            (format!("u:$7$101${salt12}"), "$7$ hash needs"),
            (format!("u:$7$101${salt12}${hash64}$x"), "$7$ hash needs"),
            (format!("u:$7$0${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$-1${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$+5${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$99999999999${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$10000001${salt12}${hash64}"), "more than"),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2".into(),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=18$m=64,t=1,p=2${argon_tail}"),
                "version",
            ),
            (
                format!("u:$argon2id$m=64,t=1,p=2${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$t=1,m=64,p=2${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=1${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=1,p=2,k=1${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$m=262145,t=1,p=1${argon_tail}"),
                "m=262145",
            ),
            (
                format!("u:$argon2id$v=19$m=262144,t=5,p=1${argon_tail}"),
                "m*t",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=0,p=2${argon_tail}"),
                "parameters",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=1,p=0${argon_tail}"),
                "parameters",
            ),
            (
                format!("u:$argon2id$v=19$m=8,t=1,p=2${argon_tail}"),
                "parameters",
            ),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2$MDEy$UMRTe1o1qafAaAWtTh1NG".into(),
                "salt is 3 bytes",
            ),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg==$UMRTe1o1qafAaAWtTh1NG"
                    .into(),
                "unpadded base64",
            ),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg$UMQ".into(),
                "hash is 2 bytes",
            ),
            (
                format!("u:$argon2i$v=19$m=64,t=1,p=2${argon_tail}"),
                "unsupported hash",
            ),
        ];
        for (bad, expected) in &cases {
            let text = format!("# header\n{good}\n\n{bad}\nlast:{SHA512_VECTOR}\n");
            match PasswordFile::parse(&text) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(e) => {
                    assert_eq!(e.line, 4, "{bad:?}: {e}");
                    assert!(e.message.contains(expected), "{bad:?}: {e}");
                }
            }
        }
    }

    /// The messages operators read are the ones the parser gave as strings.
    #[test]
    fn hash_error_messages_are_unchanged() {
        let n = NonZeroU32::new(10_000_001).unwrap();
        let params = Params::new(8, 1, 2, None).err().unwrap();
        let cases = [
            (
                HashError::Unsupported,
                "unsupported hash: expected $6$, $7$ or $argon2id$".to_string(),
            ),
            (
                HashError::Sha512Shape,
                "$6$ hash needs $<salt>$<hash>".into(),
            ),
            (
                HashError::Pbkdf2Shape,
                "$7$ hash needs $<iterations>$<salt>$<hash>".into(),
            ),
            (HashError::SaltBase64, "salt is not valid base64".into()),
            (
                HashError::SaltLength(10),
                "salt is 10 bytes, expected 12 or 64".into(),
            ),
            (HashError::HashBase64, "hash is not valid base64".into()),
            (
                HashError::HashLength(3),
                "hash is 3 bytes, expected 64".into(),
            ),
            (
                HashError::Iterations,
                "iterations must be a whole number of at least 1".into(),
            ),
            (
                HashError::TooManyIterations(n),
                "10000001 iterations is more than the 10000000 allowed".into(),
            ),
            (
                HashError::Argon2Shape,
                "argon2id hash needs $v=<version>$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>"
                    .into(),
            ),
            (
                HashError::Argon2Version,
                "argon2id version must be v=19 or v=16".into(),
            ),
            (
                HashError::Argon2Memory(262_145),
                "argon2id m=262145 KiB is more than the 262144 allowed".into(),
            ),
            (
                HashError::Argon2Work(1_310_720),
                "argon2id m*t = 1310720 KiB is more than the 1048576 allowed".into(),
            ),
            (
                HashError::Argon2SaltBase64,
                "argon2id salt is not valid unpadded base64".into(),
            ),
            (
                HashError::Argon2SaltLength(3),
                "argon2id salt is 3 bytes".into(),
            ),
            (
                HashError::Argon2TagBase64,
                "argon2id hash is not valid unpadded base64".into(),
            ),
            (
                HashError::Argon2TagLength(2),
                "argon2id hash is 2 bytes".into(),
            ),
            (
                HashError::Argon2Params(params),
                format!("argon2id parameters: {params}"),
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn duplicate_username_is_an_error() {
        let text = format!("a:{SHA512_VECTOR}\nb:{SHA512_VECTOR}\n a :{PBKDF2_BINARY}\n");
        let err = PasswordFile::parse(&text).err();
        assert_eq!(
            err,
            Some(file_error(3, "user 'a' is already defined on line 1"))
        );
        assert_eq!(
            err.map(|e| e.to_string()).unwrap_or_default(),
            "line 3: user 'a' is already defined on line 1"
        );
    }

    #[test]
    fn hash_memory_is_reused_and_sized_by_the_largest_check() {
        let f = file(&format!(
            "m:{ARGON2_MOSQUITTO_SIZES}\np:{ARGON2_TWO_LANES}\n"
        ));
        let mut memory = HashMemory::new();
        assert!(f.verify_with("p", b"\x00\xff\x01", &mut memory));
        assert_eq!(memory.bytes(), 64 * 1024);
        assert!(f.verify_with("m", b"mosquitto-2.1", &mut memory));
        assert_eq!(memory.bytes(), 4096 * 1024);
        // A smaller check runs in the same buffer (a prefix of it), which stays.
        assert!(f.verify_with("p", b"\x00\xff\x01", &mut memory));
        assert!(!f.verify_with("p", b"\x00\xff\x02", &mut memory));
        assert!(!f.verify_with("nobody", b"x", &mut memory));
        assert_eq!(memory.bytes(), 4096 * 1024);
    }

    #[test]
    fn argon2_verify_time() {
        // Not an assertion: how long one login costs with what `set` writes
        // (run with --release --nocapture for the number that matters).
        let mut f = PasswordFile::new();
        assert_eq!(f.set("u", b"password"), Ok(()));
        let start = Instant::now();
        assert!(f.verify("u", b"password"));
        let known = start.elapsed();
        let start = Instant::now();
        assert!(!f.verify("nobody", b"password"));
        let unknown = start.elapsed();
        println!("argon2id m=19456 t=2 p=1 verify: known user {known:?}, unknown user {unknown:?}");
    }
}
