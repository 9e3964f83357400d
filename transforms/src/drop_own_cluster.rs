//! `drop_own_cluster`: drop changes this cluster wrote itself.
//!
//! In a multi-region deployment every cluster stamps the documents it writes with its id
//! (`_clusterId` in Cosmos DB). The invalidator of cluster X drops changes stamped X — X's own
//! controllers already invalidated their caches — and publishes the rest. With no cluster id
//! configured nothing is dropped, so a single-cluster setup needs no special casing.

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Event, Output, Transform, TransformConfig,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Drops events whose origin-cluster field equals this cluster's id.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropOwnClusterConfig {
    /// Field holding the id of the cluster that wrote the document: a top-level name or a JSON
    /// pointer (`/meta/cluster`). CouchDB refuses unknown top-level `_` fields, so deployments
    /// there use another name.
    #[serde(default = "default_field")]
    pub field: String,
    /// This cluster's id. Empty or absent: drop nothing.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

fn default_field() -> String {
    "_clusterId".into()
}

impl TransformConfig for DropOwnClusterConfig {
    const TYPE: &'static str = "drop_own_cluster";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        if self.field.is_empty() {
            return Err(ConfigProblem::field("field", "`field` must not be empty")
                .with_hint("the Cosmos DB stamp is `_clusterId`"));
        }
        Ok(())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        Ok(Box::new(DropOwnCluster {
            field: self.field.clone(),
            cluster_id: self.cluster_id.clone().filter(|c| !c.is_empty()),
        }))
    }
}

struct DropOwnCluster {
    field: String,
    cluster_id: Option<String>,
}

impl Transform for DropOwnCluster {
    fn transform(&mut self, event: Event, out: &mut Output) {
        let own = match (&self.cluster_id, event.field(&self.field)) {
            (Some(id), Some(Value::String(origin))) => origin == id,
            _ => false,
        };
        if !own {
            out.emit(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::Metadata;
    use serde_json::json;

    fn run(cluster: Option<&str>, values: Vec<Value>) -> Vec<Value> {
        let cfg = DropOwnClusterConfig { field: default_field(), cluster_id: cluster.map(String::from) };
        let mut t = DropOwnCluster { field: cfg.field, cluster_id: cfg.cluster_id.filter(|c| !c.is_empty()) };
        let mut out = Output::default();
        let events = values.into_iter().map(|v| Event::new(v, Metadata::from_source("t"))).collect();
        t.transform_batch(events, &mut out);
        out.emitted().map(|e| Value::clone(&e.value)).collect()
    }

    #[test]
    fn drops_only_this_clusters_changes() {
        let kept = run(
            Some("west"),
            vec![
                json!({"id": "a", "_clusterId": "west"}),
                json!({"id": "b", "_clusterId": "east"}),
                json!({"id": "c"}),
            ],
        );
        assert_eq!(kept, vec![json!({"id": "b", "_clusterId": "east"}), json!({"id": "c"})]);
    }

    #[test]
    fn no_cluster_id_drops_nothing() {
        assert_eq!(run(None, vec![json!({"_clusterId": "west"})]).len(), 1);
        assert_eq!(run(Some(""), vec![json!({"_clusterId": ""})]).len(), 1);
    }
}
