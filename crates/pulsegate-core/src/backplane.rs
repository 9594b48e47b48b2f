//! The seam between this node's hub and other nodes.
//!
//! A single node needs nothing beyond its hub: [`MemoryBackplane`] keeps
//! history in the hub's memory and forwards nothing. A cluster backplane
//! (NATS, Redis; see the cluster issue) receives every message stamped here
//! through [`Backplane::forward`] and reports its health through
//! [`Backplane::is_up`], which `/readyz` and publishing consult.

use std::sync::Arc;

use crate::message::Message;

/// A failure of the backplane; publishing is refused while it lasts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// The backplane cannot be reached.
    #[error("backplane is down: {0}")]
    Down(String),
}

/// Connects a node's hub to the other nodes of a cluster.
pub trait Backplane: Send + Sync + 'static {
    /// `memory`, `nats`, `redis`: for logs, `/readyz` and metrics.
    fn name(&self) -> &'static str;
    /// Whether publishing can proceed.
    fn is_up(&self) -> bool {
        true
    }
    /// Hands a message stamped on this node to the other nodes.
    fn forward(&self, msg: &Arc<Message>) -> Result<(), BackplaneError>;
}

/// The single-node backplane: history lives in the hub, nothing is forwarded.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryBackplane;

impl Backplane for MemoryBackplane {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn forward(&self, _msg: &Arc<Message>) -> Result<(), BackplaneError> {
        Ok(())
    }
}
