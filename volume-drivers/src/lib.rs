//! Volume plugins used by the kubelet volume manager. The drivers themselves arrive with the volume work (issue 5); the crate exists so the workspace layout is fixed from the start.
