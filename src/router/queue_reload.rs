//! A reload (SIGHUP) of the declared work queues: `[[queues]]` and the bridges'
//! buffers. A queue new in the config is created (and stored); one still
//! declared takes its new options and topic bindings; one no longer declared
//! stops collecting (its config bindings go) but keeps what it holds, like a
//! queue a subscription created: it goes once empty and unconsumed, so a
//! removed bridge's buffer waits until it is purged or the bridge comes back.

use super::queues::dead_letter_queue;
use super::*;
use crate::config::QueueConfig;
use crate::queue::QueuePolicy;

impl Router {
    /// Make the declared queues those of `declared`; what could not be done,
    /// one line each (also logged).
    pub(super) fn reload_queues(
        &mut self,
        declared: Vec<QueueConfig>,
        now: Instant,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut keep: Set<String> = declared.iter().map(|q| q.name.clone()).collect();
        keep.extend(declared.iter().filter_map(QueueConfig::dead_letter_name));
        let dropped: Vec<Arc<str>> = self
            .queues
            .by_name
            .iter()
            .filter(|(n, q)| q.declared && !keep.contains(&***n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in dropped {
            self.undeclare(&name);
        }
        // Queues first, then the dead-letter queues none of them declares
        // itself (one queue may be another's dead-letter queue, with options).
        for qc in &declared {
            if let Err(why) = self.redeclare(qc) {
                problems.push(format!("queue {}: {why}", qc.name));
            }
        }
        for dlq in declared.iter().filter_map(QueueConfig::dead_letter_name) {
            if !self.queues.exists(&dlq) {
                if self.declare_queue(&dead_letter_queue(&dlq)).is_err() {
                    problems.push(format!(
                        "queue {dlq}: not created: limits.max_queues reached"
                    ));
                    continue;
                }
                info!(queue = %dlq, "dead-letter queue declared by a reload");
            }
            if let Some(q) = self.queues.by_name.get_mut(dlq.as_str()) {
                q.declared = true;
            }
        }
        for name in self.queues.names() {
            self.tick_queue(&name, now);
        }
        for p in &problems {
            warn!("reload: {p}");
        }
        problems
    }

    /// Queue `qc` as the config now declares it: created if new, its options
    /// and bindings replaced otherwise.
    fn redeclare(&mut self, qc: &QueueConfig) -> Result<(), String> {
        let mut result = Ok(());
        if !self.queues.exists(&qc.name) {
            self.declare_queue(qc)
                .map_err(|_| "not created: limits.max_queues reached".to_string())?;
            info!(queue = %qc.name, "queue declared by a reload");
        } else if let Some(q) = self.queues.by_name.get_mut(qc.name.as_str()) {
            let policy = QueuePolicy::from_config(qc);
            if *q.core.policy() != policy {
                info!(queue = %qc.name, "queue options changed by a reload");
                result = q.core.set_policy(policy).map_err(str::to_string);
            }
            q.dead_letter = qc.dead_letter_name().map(Arc::from);
            if q.qos0_gate.is_some() != qc.qos0_while_up {
                // Its link (started after this) opens it when it is up.
                q.qos0_gate = qc.qos0_while_up.then_some(false);
            }
        }
        let old = self
            .queues
            .by_name
            .get(qc.name.as_str())
            .map(|q| q.config_filters.clone())
            .unwrap_or_default();
        for f in old.iter().filter(|f| !qc.topics.iter().any(|t| t == &***f)) {
            self.queues.unbind(&qc.name, f);
        }
        for f in &qc.topics {
            if self.queues.bind(&qc.name, f).is_none() {
                result = Err(format!("topic {f} not bound: 256 bindings at most"));
            }
        }
        if let Some(q) = self.queues.by_name.get_mut(qc.name.as_str()) {
            q.declared = true;
            q.config_filters = qc.topics.iter().map(|f| Arc::from(f.as_str())).collect();
        }
        result
    }

    /// Queue `name` is no longer declared: it stops collecting and keeps what
    /// it holds until it is empty and nobody consumes it.
    fn undeclare(&mut self, name: &Arc<str>) {
        let filters = match self.queues.by_name.get_mut(name) {
            Some(q) => {
                q.declared = false;
                std::mem::take(&mut q.config_filters)
            }
            None => return,
        };
        for f in &filters {
            self.queues.unbind(name, f);
        }
        let held = self.queues.by_name.get(name).map_or(0, |q| q.core.len());
        info!(queue = %name, held, "queue no longer declared: it stops collecting and keeps what it holds until it is empty");
    }
}
