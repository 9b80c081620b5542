//! A value that a reload (SIGHUP) replaces while connection tasks keep reading it:
//! each reader takes a snapshot (`Arc`) and works on it, so a swap never waits for
//! them and they never see half a value. Owns only the swapping; what is loaded
//! and when is the caller's.

use std::sync::{Arc, RwLock};

pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    pub fn new(value: Arc<T>) -> Swap<T> {
        Swap {
            current: RwLock::new(value),
        }
    }

    /// The value as of now.
    pub fn get(&self) -> Arc<T> {
        // A poisoned lock only means a panic while swapping an Arc: the value
        // inside is still whole.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the value by `f` of it, with no other `set` or `update` in
    /// between (read-modify-write from two places at once loses nothing).
    pub fn update(&self, f: impl FnOnce(&T) -> T) {
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(f(&g)),
            Err(p) => {
                let mut g = p.into_inner();
                *g = Arc::new(f(&g));
            }
        }
    }

    pub fn set(&self, value: Arc<T>) {
        match self.current.write() {
            Ok(mut g) => *g = value,
            Err(p) => *p.into_inner() = value,
        }
    }
}
