//! Leadership: whether this replica may act. With leader election only the holder of the
//! Lease reconciles; the moment it loses the Lease it sends no more token requests and drops
//! answers still in flight (the minter checks before and while each request).

use std::future::Future;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

/// Whether this replica leads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// Always the leader (leader election is off).
    pub fn unconditional() -> Self {
        let (_sender, state) = watch::channel(true);
        Self { state }
    }

    /// Follows `state`, true while the Lease is held.
    pub fn following(state: watch::Receiver<bool>) -> Self {
        Self { state }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves when leadership is lost; never, while it is held unconditionally.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            if state.wait_for(|leader| !*leader).await.is_err() && *state.borrow() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The Lease to hold.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long it is held without renewal.
    pub duration: Duration,
    /// The field manager of its writes.
    pub field_manager: String,
}

/// A held (or awaited) Lease: the leadership it gives, and the task that keeps it.
pub struct Election {
    /// Whether this replica leads.
    pub leadership: Leadership,
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
}

impl Election {
    /// Starts competing for the Lease.
    pub async fn start(client: Client, settings: &LeaseSettings) -> anyhow::Result<Self> {
        let seconds = settings.duration.as_secs().max(2);
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .with_field_manager(&settings.field_manager)
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Self {
            leadership: Leadership::following(state.clone()),
            state,
            task,
        })
    }

    /// Waits until this replica leads (`true`), or `stop` says to stop first (`false`).
    pub async fn acquired(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<bool> {
        tokio::select! {
            result = self.state.wait_for(|leader| *leader) => {
                result.map_err(|_| anyhow::anyhow!("leader election ended unexpectedly"))?;
                Ok(true)
            }
            _ = stop.wait_for(|stop| *stop) => Ok(false),
        }
    }

    /// Lets go of the Lease: dropping the last receiver makes the lease manager release it,
    /// so a standby takes over at once instead of after the lease duration.
    pub async fn release(self) {
        drop(self.state);
        drop(self.leadership);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader-election Lease"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "the lease task failed"),
            Err(_) => tracing::warn!("the Lease was not released within 5 s; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unconditional_leadership_is_never_lost() {
        let leadership = Leadership::unconditional();
        assert!(leadership.is_leader());
        let lost = tokio::time::timeout(Duration::from_millis(50), leadership.lost()).await;
        assert!(lost.is_err(), "lost() must not resolve");
    }

    #[tokio::test]
    async fn losing_the_lease_is_seen_at_once() {
        let (sender, state) = watch::channel(true);
        let leadership = Leadership::following(state);
        let lost = tokio::spawn(leadership.lost());
        assert!(leadership.is_leader());
        sender.send_replace(false);
        tokio::time::timeout(Duration::from_secs(1), lost)
            .await
            .expect("resolves")
            .expect("task");
        assert!(!leadership.is_leader());
    }
}
