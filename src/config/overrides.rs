//! What the command line sets over the configuration file (`--listen`,
//! `--data-dir`, `--log`): applied at start and again to the file read on each
//! reload, so a SIGHUP neither undoes them nor reports them as changes.

use super::{Config, ListenerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Plain TCP listeners that replace the configured ones.
    pub listen: Vec<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// A log filter that replaces `[log] level`.
    pub log: Option<String>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if !self.listen.is_empty() {
            config.listeners = self
                .listen
                .iter()
                .map(|&bind| ListenerConfig::plain(bind))
                .collect();
        }
        if let Some(dir) = &self.data_dir {
            config.storage.dir = dir.clone();
        }
        if let Some(level) = &self.log {
            config.log.level = level.clone();
        }
    }
}
