//! Why a step of the cluster's work did not happen, told apart so that the
//! caller can decide: try again next round, stop acting as the leader, or
//! say loudly that a person must fix something first.

use super::settings::SettingsError;
use crate::addons::AddonError;
use crate::etcd::membership::MembershipError;
use crate::etcd::EtcdError;
use crate::kube::client::KubeError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// A membership change refused or not finished: etcd's state (quorum,
    /// a member down, a join holding the lock) or etcd's answer.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Addon(#[from] AddonError),
    /// A guard holds the step back (etcd would lose its quorum, the node
    /// answered again): the state of the cluster, seen again next round.
    #[error("{0}")]
    Held(String),
    /// This agent's term ended: whoever leads now goes on from the records.
    #[error("{0}")]
    NotLeader(String),
    /// This host lacks what the step needs (a file, a certificate, a
    /// bundle): trying again will not help until it is fixed.
    #[error("{0}")]
    Host(String),
    /// What was being done when `source` happened.
    #[error("{what}: {source}")]
    During {
        what: String,
        #[source]
        source: Box<ClusterError>,
    },
}

impl ClusterError {
    /// The same error, saying what was being done.
    pub fn during(self, what: impl Into<String>) -> Self {
        ClusterError::During { what: what.into(), source: Box::new(self) }
    }

    /// The error under every [`ClusterError::During`].
    pub fn cause(&self) -> &ClusterError {
        match self {
            ClusterError::During { source, .. } => source.cause(),
            other => other,
        }
    }

    /// Whether the same step may succeed next round without anyone's help:
    /// a server that did not answer, a guard that may lift. A refusal the
    /// API server will repeat (403, 422), a file missing on this host, or
    /// the end of this agent's term will not.
    pub fn retryable(&self) -> bool {
        match self.cause() {
            ClusterError::Etcd(e) => matches!(e, EtcdError::Call { .. }),
            ClusterError::Kube(e) => e.retryable(),
            ClusterError::Membership(MembershipError::Etcd(e)) => matches!(e, EtcdError::Call { .. }),
            ClusterError::Membership(_) => true,
            ClusterError::Settings(SettingsError::Etcd(e)) => matches!(e, EtcdError::Call { .. }),
            ClusterError::Settings(SettingsError::Conflict { .. }) => true,
            ClusterError::Settings(SettingsError::Unreadable(_) | SettingsError::Newer { .. }) => false,
            ClusterError::Addon(AddonError::Apply { source, .. }) => source.retryable(),
            ClusterError::Addon(_) => false,
            ClusterError::Held(_) => true,
            ClusterError::NotLeader(_) | ClusterError::Host(_) => false,
            ClusterError::During { .. } => unreachable!("cause() looks through"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> ClusterError {
        ClusterError::Kube(KubeError::Status {
            what: "node m1".into(),
            server: "10.0.0.1:6443".into(),
            code,
            reason: String::new(),
            message: String::new(),
        })
    }

    #[test]
    fn what_may_pass_by_itself_is_told_from_what_needs_a_person() {
        let cases = [
            (ClusterError::Etcd(EtcdError::Call { endpoint: "e".into(), message: "deadline".into() }), true),
            (ClusterError::Etcd(EtcdError::NoCredentials { path: "p".into() }), false),
            (status(503), true),
            (status(429), true),
            (status(409), true),
            (status(403), false),
            (status(422), false),
            (
                ClusterError::Kube(KubeError::Unreachable {
                    what: "w".into(),
                    server: "s".into(),
                    message: "m".into(),
                }),
                true,
            ),
            (ClusterError::Held("quorum".into()), true),
            (ClusterError::NotLeader("term ended".into()), false),
            (ClusterError::Host("no CA".into()), false),
        ];
        for (e, retryable) in cases {
            let wrapped = e.during("purging w1 (Taint)").during("round");
            assert_eq!(wrapped.retryable(), retryable, "{wrapped}");
        }
    }

    #[test]
    fn the_context_reads_outside_in() {
        let e = ClusterError::Held("etcd would lose its quorum".into()).during("purging m2 (RemoveMember)");
        assert_eq!(e.to_string(), "purging m2 (RemoveMember): etcd would lose its quorum");
        assert!(matches!(e.cause(), ClusterError::Held(_)));
    }
}
