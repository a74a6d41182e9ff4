//! Long-running work and how far it is: the backfills of views over Kafka
//! sources (each view's reader reading what the topic held when it
//! started). `SHOW JOBS` and `eddy_catalog.jobs` list them;
//! `CREATE MATERIALIZED VIEW` waits for its backfill and sends the client a
//! NOTICE with the progress about once a second, unless the session set
//! `background_ddl = true`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;

use super::columns::{some, Columns};
use crate::catalog::{Catalog, Relation};
use crate::common::RelationId;
use crate::connectors::kafka::{Backfill, KafkaSourceConfig};
use crate::connectors::SourceConnector;
use crate::error::Result;
use crate::runtime::RuntimeHandle;

/// How often a waiting CREATE reports progress.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long to wait for a reader to say what it backfills (it starts at
/// once; this only bounds a reader that never got going).
const REGISTER_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The Kafka sources among `inputs`: `(source name, config)`.
pub fn kafka_inputs(
    catalog: &Catalog,
    inputs: &[RelationId],
) -> Vec<(String, Arc<KafkaSourceConfig>)> {
    catalog
        .list()
        .into_iter()
        .filter_map(|relation| match relation {
            Relation::Source(source) if inputs.contains(&source.id) => match &source.connector {
                SourceConnector::Kafka(config) => Some((source.name.clone(), config.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Waits for a new view's backfills, reporting progress.
pub struct BackfillWatch {
    runtime: RuntimeHandle,
    view: String,
    sources: Vec<(String, Arc<KafkaSourceConfig>)>,
    started: Instant,
    last_report: Instant,
    finished: bool,
}

impl std::fmt::Debug for BackfillWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackfillWatch({})", self.view)
    }
}

impl BackfillWatch {
    pub fn new(
        runtime: RuntimeHandle,
        view: String,
        sources: Vec<(String, Arc<KafkaSourceConfig>)>,
    ) -> Self {
        let now = Instant::now();
        Self {
            runtime,
            view,
            sources,
            started: now,
            last_report: now,
            finished: false,
        }
    }

    /// The next NOTICE for the client: progress about once a second, then
    /// one saying the backfill is done; `None` after that.
    pub async fn next_report(&mut self) -> Option<String> {
        if self.finished {
            return None;
        }
        loop {
            let backfills: Vec<(&str, Option<Backfill>)> = self
                .sources
                .iter()
                .map(|(name, config)| (name.as_str(), config.progress.backfill(&self.view)))
                .collect();
            let waiting_to_register = backfills.iter().any(|(_, b)| b.is_none());
            let all_done = backfills
                .iter()
                .all(|(_, b)| b.as_ref().is_some_and(Backfill::is_done));
            if all_done || (waiting_to_register && self.started.elapsed() > REGISTER_WAIT) {
                self.finished = true;
                // The readers queued what they read before saying so: once
                // published, the view holds it.
                if let Err(e) = self.runtime.publish().await {
                    return Some(e.to_string());
                }
                return Some(self.summary(&backfills));
            }
            if !waiting_to_register && self.last_report.elapsed() >= REPORT_EVERY {
                self.last_report = Instant::now();
                let parts: Vec<String> = backfills
                    .iter()
                    .filter_map(|(source, b)| Some((source, b.as_ref()?)))
                    .map(|(source, b)| {
                        format!(
                            "{} of {} messages of {source} ({:.0}%)",
                            b.read,
                            b.total(),
                            percent(b)
                        )
                    })
                    .collect();
                return Some(format!(
                    "backfilling materialized view \"{}\": {}",
                    self.view,
                    parts.join(", ")
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn summary(&self, backfills: &[(&str, Option<Backfill>)]) -> String {
        let read: i64 = backfills
            .iter()
            .filter_map(|(_, b)| b.as_ref())
            .map(|b| b.read)
            .sum();
        let mut errors: Vec<String> = backfills
            .iter()
            .filter_map(|(source, b)| Some(format!("{source}: {}", b.as_ref()?.error.as_ref()?)))
            .collect();
        errors.extend(self.sources.iter().filter_map(|(source, config)| {
            let why = config.progress.trouble(&self.view)?;
            Some(format!("{source} cannot reach Kafka: {why}"))
        }));
        let elapsed = self.started.elapsed().as_secs_f64();
        if errors.is_empty() {
            format!(
                "materialized view \"{}\" backfilled {read} messages in {elapsed:.1} s",
                self.view
            )
        } else {
            format!(
                "materialized view \"{}\" created; its backfill did not finish ({}): it \
                 goes on in the background",
                self.view,
                errors.join("; ")
            )
        }
    }
}

fn percent(backfill: &Backfill) -> f64 {
    match backfill.total() {
        0 => 100.0,
        total => backfill.read as f64 * 100.0 / total as f64,
    }
}

/// The rows of `SHOW JOBS` and `eddy_catalog.jobs`: every reader's
/// backfill, running first. A reader that cannot reach its brokers shows
/// `waiting: <why>` (with no backfill yet, it has not learnt what to read).
pub fn jobs_batch(catalog: &Catalog) -> Result<RecordBatch> {
    struct Job {
        view: String,
        source: String,
        backfill: Option<Backfill>,
        trouble: Option<String>,
    }
    let mut jobs: Vec<Job> = vec![];
    for relation in catalog.list() {
        let Relation::Source(source) = relation else {
            continue;
        };
        let SourceConnector::Kafka(config) = &source.connector else {
            continue;
        };
        let mut troubles: std::collections::BTreeMap<String, String> =
            config.progress.troubles().into_iter().collect();
        for (view, backfill) in config.progress.backfills() {
            let trouble = troubles.remove(&view);
            jobs.push(Job {
                view,
                source: source.name.clone(),
                backfill: Some(backfill),
                trouble,
            });
        }
        jobs.extend(troubles.into_iter().map(|(view, trouble)| Job {
            view,
            source: source.name.clone(),
            backfill: None,
            trouble: Some(trouble),
        }));
    }
    let done = |j: &Job| j.backfill.as_ref().is_some_and(Backfill::is_done);
    jobs.sort_by_key(|j| (done(j), j.view.clone(), j.source.clone()));
    let now = chrono::Utc::now().timestamp_millis();
    Ok(Columns::default()
        .text("view", some(jobs.iter().map(|j| &j.view)))
        .text(
            "job",
            some(jobs.iter().map(|j| format!("backfill from {}", j.source))),
        )
        .text(
            "status",
            some(jobs.iter().map(|j| {
                let error = j.backfill.as_ref().and_then(|b| b.error.as_ref());
                match (error, &j.trouble, done(j)) {
                    (Some(e), _, _) => format!("stopped: {e}"),
                    (None, Some(why), false) => format!("waiting: cannot reach Kafka: {why}"),
                    (None, _, true) => "done".to_string(),
                    (None, None, false) => "running".to_string(),
                }
            })),
        )
        .float(
            "progress",
            jobs.iter().map(|j| j.backfill.as_ref().map(percent)),
        )
        .int(
            "messages_read",
            jobs.iter()
                .map(|j| Some(j.backfill.as_ref().map_or(0, |b| b.read))),
        )
        .int(
            "messages_total",
            jobs.iter()
                .map(|j| j.backfill.as_ref().map(Backfill::total)),
        )
        .timestamp_ms(
            "started_at",
            jobs.iter()
                .map(|j| j.backfill.as_ref().map(|b| b.started_unix_ms)),
        )
        .int(
            "elapsed_ms",
            jobs.iter().map(|j| {
                let b = j.backfill.as_ref()?;
                Some(b.finished_after_ms.unwrap_or(now - b.started_unix_ms))
            }),
        )
        .batch()?)
}
