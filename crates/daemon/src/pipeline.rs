//! The pipeline a node runs and the fingerprints that identify its parts.
//!
//! A fingerprint is a hash of a canonical encoding of the compiled plan:
//! the plan types' serde form in bincode's standard configuration, which
//! depends on field order and values only (not on names, formatting of the
//! SQL, or `Debug` output). The version prefix changes whenever the
//! encoding itself does, so a stored fingerprint of another version never
//! equals a new one (the shard then rebuilds, which is always safe).

use lockstep_core::plan::{Catalog, Table, View};
use std::sync::Arc;

/// Largest pipeline SQL a node runs or `views apply` takes: it is part of
/// the replicated state, sent to every member.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Version of the canonical plan encoding behind fingerprints.
pub const FINGERPRINT_VERSION: &str = "v1";

/// The pipeline a node runs: its SQL, plan and views. Replaced as a whole
/// by `views apply`; each shard actor keeps the one its engine was built for.
pub struct Pipeline {
    pub sql: String,
    pub catalog: Arc<Catalog>,
    /// The views the node runs, in engine order.
    pub view_names: Vec<String>,
    /// In a cluster, the version of the cluster's pipeline this is (0 on
    /// one node).
    pub version: u64,
}

/// 64-bit FNV-1a: stable across builds and platforms (std's hashers are
/// not).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The hash a serve-and-ingest request's event is recognised by under its
/// Idempotency-Key (its row as the log stores it).
pub fn event_hash(row: &lockstep_core::value::Row) -> u64 {
    fnv1a64(&lockstep_io::raw::encode_event(row))
}

fn canonical_fingerprint<T: serde::Serialize>(plan: &T) -> String {
    let bytes = bincode::serde::encode_to_vec(plan, bincode::config::standard())
        .expect("compiled plans encode");
    format!(
        "{FINGERPRINT_VERSION}-{:016x}{:08x}",
        fnv1a64(&bytes),
        crc32fast::hash(&bytes)
    )
}

/// A stable fingerprint of a view's compiled plan (so formatting changes
/// in the SQL do not count as changes).
pub fn view_fingerprint(v: &View) -> String {
    canonical_fingerprint(v)
}

/// A stable fingerprint of a table's definition (columns, key, event time,
/// lateness, shards, event id): fixed for a data directory and a cluster.
pub fn table_fingerprint(t: &Table) -> String {
    canonical_fingerprint(t)
}

impl Pipeline {
    pub fn new(sql: String, catalog: Catalog) -> Pipeline {
        let view_names = catalog.views.iter().map(|v| v.name.clone()).collect();
        Pipeline {
            sql,
            catalog: Arc::new(catalog),
            view_names,
            version: 0,
        }
    }

    pub fn with_version(mut self, version: u64) -> Pipeline {
        self.version = version;
        self
    }

    pub fn view_name_refs(&self) -> Vec<&str> {
        self.view_names.iter().map(String::as_str).collect()
    }

    /// Engine view index → its plan.
    pub fn view(&self, v: usize) -> &View {
        let name = &self.view_names[v];
        self.catalog.view(name).expect("running views exist").1
    }

    pub fn view_index(&self, name: &str) -> Option<usize> {
        self.view_names.iter().position(|n| n == name)
    }

    /// Each view's name and fingerprint, in catalog order.
    pub fn view_fingerprints(&self) -> Vec<(String, String)> {
        self.catalog
            .views
            .iter()
            .map(|v| (v.name.clone(), view_fingerprint(v)))
            .collect()
    }

    /// Fingerprint of all views in order: a checkpoint taken under another
    /// pipeline cannot be restored under this one.
    pub fn fingerprint(&self) -> String {
        let all: Vec<String> = self
            .view_fingerprints()
            .into_iter()
            .map(|(name, fp)| format!("{name}={fp}"))
            .collect();
        all.join(",")
    }
}

/// Why the cluster's pipeline cannot run on this node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterPipelineError {
    #[error("the cluster's pipeline (version {version}) does not parse on this node: {line}:{column}: {message}")]
    Parse {
        version: u64,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("the cluster's pipeline (version {version}) declares table `{table}` differently from this node's pipeline file; every node runs the cluster's table")]
    Table { version: u64, table: String },
}

/// The pipeline the cluster runs (its view registry), if it has one, checked
/// against this node's table: every node runs the cluster's views.
pub fn cluster_pipeline(
    p: &lockstep_cluster::state::PipelineVersion,
    table: &Table,
) -> Result<Option<Pipeline>, ClusterPipelineError> {
    if p.version == 0 {
        return Ok(None);
    }
    let catalog =
        lockstep_core::parse_pipeline(&p.sql).map_err(|e| ClusterPipelineError::Parse {
            version: p.version,
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        })?;
    match catalog.tables.first() {
        Some(t) if table_fingerprint(t) == table_fingerprint(table) => {}
        _ => {
            return Err(ClusterPipelineError::Table {
                version: p.version,
                table: table.name.clone(),
            })
        }
    }
    Ok(Some(
        Pipeline::new(p.sql.clone(), catalog).with_version(p.version),
    ))
}

/// Replaces the file at `path` with `bytes` so that a crash or power loss
/// leaves either the old file or the new one, on disk: written to a
/// temporary file, fsynced, renamed over `path`, and the directory fsynced.
pub fn write_file_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("applying");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(sql: &str) -> Catalog {
        lockstep_core::parse_pipeline(sql).unwrap()
    }

    const BASE: &str = "CREATE TABLE t (u TEXT, k TEXT, ts TIMESTAMP) WITH (key = 'u', event_time = 'ts', lateness = '1 second', shards = 2);";

    #[test]
    fn fingerprints_ignore_formatting_and_see_plan_changes() {
        let a = catalog(&format!("{BASE} CREATE VIEW v AS SELECT u, COUNT(*) OVER w AS n FROM t WINDOW w AS (PARTITION BY u ORDER BY ts RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW);"));
        let b = catalog(&format!("{BASE}\n\ncreate view v as\n  select u,\n    count(*) over w as n\n  from t\n  window w as (partition by u order by ts range between interval '60' minute preceding and current row);"));
        let c = catalog(&format!("{BASE} CREATE VIEW v AS SELECT u, COUNT(*) OVER w AS n FROM t WINDOW w AS (PARTITION BY u ORDER BY ts RANGE BETWEEN INTERVAL '2' HOUR PRECEDING AND CURRENT ROW);"));
        let fa = view_fingerprint(&a.views[0]);
        assert!(fa.starts_with("v1-"), "{fa}");
        assert_eq!(fa, view_fingerprint(&b.views[0]));
        assert_ne!(fa, view_fingerprint(&c.views[0]));
        assert_eq!(
            table_fingerprint(&a.tables[0]),
            table_fingerprint(&c.tables[0])
        );
        let other = catalog(&BASE.replace("1 second", "2 seconds"));
        assert_ne!(
            table_fingerprint(&a.tables[0]),
            table_fingerprint(&other.tables[0])
        );
    }
}
