//! control plane
