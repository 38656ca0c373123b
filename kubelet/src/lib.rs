//! The Kubernetes node agent.
