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

    pub fn set(&self, value: Arc<T>) {
        match self.current.write() {
            Ok(mut g) => *g = value,
            Err(p) => *p.into_inner() = value,
        }
    }
}
