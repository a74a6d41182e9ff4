//! eddy's health in one place. [`Health`] is gathered in one go (the
//! runtime's view status, the catalog's sources and sinks, the checkpoint
//! figures) and shown three ways: Prometheus text
//! ([`crate::server::metrics`]), the `eddy_catalog.*_stats` system tables
//! (`engine/system.rs`) and the JSON behind the web page
//! ([`crate::server::web`]), so all three agree.
//!
//! [`Monitor`] samples the health once a second and keeps the last five
//! minutes of counters: rates (rows/s, messages/s) are the difference over
//! the last few samples, and the web page's charts are the history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::catalog::{Catalog, Relation, SinkEntry};
use crate::connectors::kafka::PartitionProgress;
use crate::connectors::SourceConnector;
use crate::error::Result;
use crate::runtime::checkpoint::CheckpointStats;
use crate::runtime::{RuntimeHandle, ViewStatus};

/// How many samples the monitor keeps (one a second: five minutes).
pub const HISTORY_SAMPLES: usize = 300;
/// How often the monitor samples.
pub const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Rates are taken over (at most) this many seconds of samples.
const RATE_WINDOW_SAMPLES: usize = 5;

/// Everything eddy knows about its health at one moment.
pub struct Health {
    pub unix_ms: i64,
    /// The last published epoch.
    pub epoch: u64,
    pub views: Vec<ViewStatus>,
    pub sources: Vec<SourceHealth>,
    pub sinks: Vec<Arc<SinkEntry>>,
    pub checkpoints: CheckpointStats,
}

/// One source and what its readers (one per view reading it) have done.
pub struct SourceHealth {
    pub name: String,
    /// `kafka`, `datagen` or `nexmark`.
    pub connector: &'static str,
    pub topic: Option<String>,
    /// Messages and payload bytes read, by all readers (Kafka only).
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
    pub bad_messages: u64,
    /// `((reading view, partition), progress)` (Kafka only).
    pub partitions: Vec<((String, i32), PartitionProgress)>,
    /// `(reading view, watermark µs)` (Kafka only).
    pub watermarks: Vec<(String, i64)>,
}

impl SourceHealth {
    /// Messages not read yet, summed over readers and partitions (where
    /// the broker's end is known).
    pub fn lag(&self) -> Option<i64> {
        let lags: Vec<i64> = self
            .partitions
            .iter()
            .filter_map(|(_, p)| p.lag())
            .collect();
        (!lags.is_empty()).then(|| lags.iter().sum())
    }

    /// The lowest watermark of the source's readers.
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.iter().map(|(_, w)| *w).min()
    }
}

/// Marks the views whose Kafka readers cannot reach their brokers now
/// (their status says `waiting: source ... cannot reach Kafka: ...`).
pub fn note_waiting_inputs(catalog: &Catalog, views: &mut [ViewStatus]) {
    for relation in catalog.list() {
        let Relation::Source(source) = relation else {
            continue;
        };
        let SourceConnector::Kafka(config) = &source.connector else {
            continue;
        };
        for (view, reason) in config.progress.troubles() {
            if let Some(status) = views.iter_mut().find(|v| v.name == view) {
                status.waiting = Some(format!(
                    "source {} cannot reach Kafka: {reason}",
                    source.name
                ));
            }
        }
    }
}

impl Health {
    /// The health now: the runtime's status (after every change queued
    /// before), the catalog's sources and sinks, and `checkpoints`.
    pub async fn gather(
        runtime: &RuntimeHandle,
        catalog: &Catalog,
        checkpoints: CheckpointStats,
    ) -> Result<Self> {
        let (epoch, mut views) = runtime.status().await?;
        // A sink's own view (`CREATE SINK ... AS SELECT`) is the sink's
        // part: shown as the sink, not as a view of its own.
        views.retain(
            |v| !matches!(catalog.get(&v.name), Some(Relation::View(e)) if e.owner_sink.is_some()),
        );
        note_waiting_inputs(catalog, &mut views);
        Ok(Self {
            unix_ms: chrono::Utc::now().timestamp_millis(),
            epoch,
            views,
            sources: Self::sources(&catalog.list()),
            sinks: catalog.list_sinks(),
            checkpoints,
        })
    }

    /// The health of the sources among `relations`.
    pub fn sources(relations: &[Relation]) -> Vec<SourceHealth> {
        relations
            .iter()
            .filter_map(|r| match r {
                Relation::Source(s) => Some(s),
                _ => None,
            })
            .map(|source| match &source.connector {
                SourceConnector::Kafka(config) => SourceHealth {
                    name: source.name.clone(),
                    connector: "kafka",
                    topic: Some(config.topic.clone()),
                    messages: Some(config.counters.messages()),
                    bytes: Some(config.counters.bytes()),
                    bad_messages: config.errors.total(),
                    partitions: config.progress.partitions(),
                    watermarks: config.progress.watermarks(),
                },
                other => SourceHealth {
                    name: source.name.clone(),
                    connector: match other {
                        SourceConnector::Datagen(_) => "datagen",
                        _ => "nexmark",
                    },
                    topic: None,
                    // Generated rows; they have no payload bytes.
                    messages: Some(other.counters().messages()),
                    bytes: None,
                    bad_messages: 0,
                    partitions: vec![],
                    watermarks: vec![],
                },
            })
            .collect()
    }

    /// The counters and gauges the monitor keeps history of, by series key:
    /// `source/<name>/messages|bytes|lag`, `view/<name>/changes|freshness`,
    /// `operator/<view>/<id>/rows_in|rows_out`, `sink/<name>/rows`.
    fn series(&self) -> BTreeMap<String, f64> {
        let mut series = BTreeMap::new();
        for source in &self.sources {
            if let Some(messages) = source.messages {
                series.insert(source_key(&source.name, "messages"), messages as f64);
            }
            if let Some(bytes) = source.bytes {
                series.insert(source_key(&source.name, "bytes"), bytes as f64);
            }
            if let Some(lag) = source.lag() {
                series.insert(source_key(&source.name, "lag"), lag as f64);
            }
        }
        for view in &self.views {
            if let Some(root) = view.operators.first() {
                series.insert(view_key(&view.name, "changes"), root.stats.rows_out as f64);
            }
            if let Some(freshness) = view.freshness.last_seconds {
                series.insert(view_key(&view.name, "freshness"), freshness);
            }
            for operator in &view.operators {
                let key = |what| operator_key(&view.name, operator.id, what);
                series.insert(key("rows_in"), operator.stats.rows_in as f64);
                series.insert(key("rows_out"), operator.stats.rows_out as f64);
            }
        }
        for sink in &self.sinks {
            series.insert(
                format!("sink/{}/rows", sink.name),
                sink.status.rows_written() as f64,
            );
        }
        series
    }
}

pub fn source_key(source: &str, what: &str) -> String {
    format!("source/{source}/{what}")
}

pub fn view_key(view: &str, what: &str) -> String {
    format!("view/{view}/{what}")
}

pub fn operator_key(view: &str, operator: u64, what: &str) -> String {
    format!("operator/{view}/{operator:016x}/{what}")
}

pub fn sink_key(sink: &str, what: &str) -> String {
    format!("sink/{sink}/{what}")
}

struct Sample {
    unix_ms: i64,
    series: BTreeMap<String, f64>,
}

/// The last [`HISTORY_SAMPLES`] samples of the health's counters.
#[derive(Default)]
pub struct Monitor {
    samples: Mutex<VecDeque<Sample>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Monitor")
    }
}

impl Monitor {
    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `health`'s counters as the newest sample.
    pub fn record(&self, health: &Health) {
        let mut samples = self.samples();
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample {
            unix_ms: health.unix_ms,
            series: health.series(),
        });
    }

    /// The per-second rate of counter `key` over the last few samples;
    /// `None` until two samples have it.
    pub fn rate(&self, key: &str) -> Option<f64> {
        let samples = self.samples();
        let recent: Vec<(i64, f64)> = samples
            .iter()
            .rev()
            .take(RATE_WINDOW_SAMPLES + 1)
            .filter_map(|s| Some((s.unix_ms, *s.series.get(key)?)))
            .collect();
        let (&(t1, v1), &(t0, v0)) = (recent.first()?, recent.last()?);
        (t1 > t0).then(|| ((v1 - v0).max(0.0)) * 1000.0 / (t1 - t0) as f64)
    }

    /// The history of `key` as `(unix ms, value)`: the values of a gauge,
    /// or, with `as_rate`, a counter's per-second rate between samples.
    pub fn history(&self, key: &str, as_rate: bool) -> Vec<(i64, f64)> {
        let samples = self.samples();
        let points: Vec<(i64, f64)> = samples
            .iter()
            .filter_map(|s| Some((s.unix_ms, *s.series.get(key)?)))
            .collect();
        if !as_rate {
            return points;
        }
        points
            .windows(2)
            .filter(|w| w[1].0 > w[0].0)
            .map(|w| {
                let rate = (w[1].1 - w[0].1).max(0.0) * 1000.0 / (w[1].0 - w[0].0) as f64;
                (w[1].0, rate)
            })
            .collect()
    }
}

impl super::Engine {
    /// Everything eddy knows about its health now.
    pub async fn health(&self) -> Result<Health> {
        Health::gather(&self.runtime, &self.catalog, self.checkpoints.stats()).await
    }

    /// The health history (rates, the web page's charts).
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Takes one sample of the health into the monitor.
    pub async fn sample_health(&self) -> Result<()> {
        let health = self.health().await?;
        self.monitor.record(&health);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health_with_messages(unix_ms: i64, messages: u64) -> Health {
        Health {
            unix_ms,
            epoch: 0,
            views: vec![],
            sources: vec![SourceHealth {
                name: "s".into(),
                connector: "kafka",
                topic: Some("t".into()),
                messages: Some(messages),
                bytes: Some(0),
                bad_messages: 0,
                partitions: vec![],
                watermarks: vec![],
            }],
            sinks: vec![],
            checkpoints: CheckpointStats::default(),
        }
    }

    #[test]
    fn rates_are_differences_over_time() {
        let monitor = Monitor::default();
        let key = source_key("s", "messages");
        monitor.record(&health_with_messages(1_000, 100));
        assert_eq!(monitor.rate(&key), None);
        monitor.record(&health_with_messages(2_000, 300));
        monitor.record(&health_with_messages(3_000, 700));
        assert_eq!(monitor.rate(&key), Some(300.0));
        assert_eq!(
            monitor.history(&key, true),
            vec![(2_000, 200.0), (3_000, 400.0)]
        );
        assert_eq!(monitor.history(&key, false).len(), 3);
        assert_eq!(monitor.rate("source/other/messages"), None);
    }

    #[test]
    fn history_is_bounded() {
        let monitor = Monitor::default();
        for i in 0..(HISTORY_SAMPLES as i64 + 50) {
            monitor.record(&health_with_messages(i * 1000, i as u64));
        }
        let history = monitor.history(&source_key("s", "messages"), false);
        assert_eq!(history.len(), HISTORY_SAMPLES);
        assert_eq!(history[0].0, 50_000);
    }

    #[test]
    fn lag_sums_the_partitions_whose_end_is_known() {
        let mut health = health_with_messages(0, 0);
        let progress = |next, high| PartitionProgress {
            next_offset: next,
            low_offset: Some(0),
            high_offset: high,
            event_time: None,
            bad_messages: 0,
        };
        health.sources[0].partitions = vec![
            (("v".into(), 0), progress(Some(40), Some(100))),
            (("v".into(), 1), progress(None, Some(7))),
            (("v".into(), 2), progress(Some(5), None)),
        ];
        assert_eq!(health.sources[0].lag(), Some(60 + 7));
    }
}
