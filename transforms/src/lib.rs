//! # feedline-transforms
//!
//! Built-in transforms, one file each, each with its config struct (the reference docs), its
//! implementation and its unit tests:
//!
//! - [`drop_own_cluster`]: drop changes written by this cluster (`_clusterId == cluster_id`).
//! - [`soft_delete`]: recognise soft-deleted documents; drop, mark as delete, or pass.
//! - [`invalidate_cache`]: document change → OpenWhisk `cacheInvalidation` message.
//! - [`extract_activation`]: activation-completion message → activation document to store.
//! - [`filter`]: keep events matching conditions on fields.
//! - [`remap`]: set / rename / remove / copy fields by JSON pointer.
//! - [`wasm`]: a sandboxed WebAssembly module as a filter or a map (guest SDK: `feedline-guest`).

pub mod drop_own_cluster;
pub mod extract_activation;
pub mod filter;
pub mod invalidate_cache;
pub mod remap;
pub mod soft_delete;
pub mod wasm;

use feedline_engine::Registry;

/// Register every built-in transform. One line per transform.
pub fn register(registry: &mut Registry) {
    registry.add_transform::<drop_own_cluster::DropOwnClusterConfig>();
    registry.add_transform::<soft_delete::SoftDeleteConfig>();
    registry.add_transform::<invalidate_cache::InvalidateCacheConfig>();
    registry.add_transform::<extract_activation::ExtractActivationConfig>();
    registry.add_transform::<filter::FilterConfig>();
    registry.add_transform::<remap::RemapConfig>();
    registry.add_transform::<wasm::WasmConfig>();
}
