//! eddy's health as Prometheus text (exposition format 0.0.4), served at
//! `/metrics` by [`super::http`].
//!
//! Names follow Prometheus conventions: `eddy_` prefix, `_total` for
//! counters, units in names. Labels name the object (`view`, `operator`,
//! `sink`, `source`). Everything is read from the same status the system
//! tables show, so SQL and Prometheus agree.

use std::fmt::Write;
use std::sync::Arc;

use crate::catalog::{Relation, SinkEntry};
use crate::connectors::SourceConnector;
use crate::runtime::checkpoint::CheckpointStats;
use crate::runtime::ViewStatus;

/// One metric family being written: its HELP and TYPE lines, then samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a family from `items`, one sample each.
fn family<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    items: &[T],
    sample: impl Fn(&T) -> (Vec<(&str, String)>, f64),
) {
    let mut family = Family::new(out, name, kind, help);
    for item in items {
        let (labels, value) = sample(item);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        family.sample(name, &labels, value);
    }
}

/// The metrics text for the runtime's `epoch` and `views`, and the
/// catalog's sinks and relations.
pub fn render(
    epoch: u64,
    checkpoints: &CheckpointStats,
    views: &[ViewStatus],
    sinks: &[Arc<SinkEntry>],
    relations: &[Relation],
) -> String {
    let mut out = String::new();
    render_checkpoints(&mut out, checkpoints);
    family(
        &mut out,
        "eddy_epoch",
        "gauge",
        "The last published epoch (every SELECT reads one epoch).",
        &[epoch],
        |e| (vec![], *e as f64),
    );
    let view = |v: &ViewStatus| vec![("view", v.name.clone())];
    family(
        &mut out,
        "eddy_view_rows",
        "gauge",
        "Rows in a materialized view.",
        views,
        |v| (view(v), v.rows as f64),
    );
    family(
        &mut out,
        "eddy_view_failed_rows_total",
        "counter",
        "Rows a view skipped because an expression failed on them.",
        views,
        |v| (view(v), v.rows_failed as f64),
    );
    family(
        &mut out,
        "eddy_view_late_rows_total",
        "counter",
        "Changes a view dropped because they arrived after their window closed.",
        views,
        |v| (view(v), v.late_rows as f64),
    );
    family(
        &mut out,
        "eddy_view_running",
        "gauge",
        "1 while a view runs, 0 once it stopped on an error.",
        views,
        |v| (view(v), if v.failed.is_some() { 0.0 } else { 1.0 }),
    );
    let operators: Vec<(&str, String, &crate::stream::OperatorStats)> = views
        .iter()
        .flat_map(|v| {
            v.operators
                .iter()
                .map(move |(id, _, stats)| (v.name.as_str(), format!("{id:016x}"), stats))
        })
        .collect();
    let operator = |o: &(&str, String, &crate::stream::OperatorStats)| {
        vec![("view", o.0.to_string()), ("operator_id", o.1.clone())]
    };
    family(
        &mut out,
        "eddy_operator_rows_in_total",
        "counter",
        "Rows an operator received.",
        &operators,
        |o| (operator(o), o.2.rows_in as f64),
    );
    family(
        &mut out,
        "eddy_operator_rows_out_total",
        "counter",
        "Rows an operator emitted.",
        &operators,
        |o| (operator(o), o.2.rows_out as f64),
    );
    family(
        &mut out,
        "eddy_operator_state_keys",
        "gauge",
        "Keys (groups, distinct values, window rows) an operator holds as state.",
        &operators,
        |o| (operator(o), o.2.state_keys as f64),
    );
    let sink = |s: &Arc<SinkEntry>| vec![("sink", s.name.clone()), ("view", s.view_name.clone())];
    family(
        &mut out,
        "eddy_sink_rows_written_total",
        "counter",
        "Rows (or messages) a sink has written.",
        sinks,
        |s| (sink(s), s.status.rows_written() as f64),
    );
    family(
        &mut out,
        "eddy_sink_committed_epoch",
        "gauge",
        "The last epoch a sink made durable.",
        sinks,
        |s| (sink(s), s.status.committed_epoch() as f64),
    );
    family(
        &mut out,
        "eddy_sink_lag_epochs",
        "gauge",
        "Epochs published but not yet written by a sink.",
        sinks,
        |s| {
            (
                sink(s),
                epoch.saturating_sub(s.status.committed_epoch()) as f64,
            )
        },
    );
    family(
        &mut out,
        "eddy_sink_failed",
        "gauge",
        "1 once a sink failed with an error retrying cannot fix.",
        sinks,
        |s| {
            (
                sink(s),
                if s.status.failure().is_some() {
                    1.0
                } else {
                    0.0
                },
            )
        },
    );
    let kafka: Vec<(String, Arc<crate::connectors::kafka::KafkaSourceConfig>)> = relations
        .iter()
        .filter_map(|r| match r {
            Relation::Source(s) => match &s.connector {
                SourceConnector::Kafka(config) => Some((s.name.clone(), config.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let source = |s: &(String, Arc<crate::connectors::kafka::KafkaSourceConfig>)| {
        vec![("source", s.0.clone()), ("topic", s.1.topic.clone())]
    };
    family(
        &mut out,
        "eddy_source_messages_total",
        "counter",
        "Kafka messages read (by all the source's readers).",
        &kafka,
        |s| (source(s), s.1.counters.messages() as f64),
    );
    family(
        &mut out,
        "eddy_source_bytes_total",
        "counter",
        "Kafka message payload bytes read (by all the source's readers).",
        &kafka,
        |s| (source(s), s.1.counters.bytes() as f64),
    );
    family(
        &mut out,
        "eddy_source_malformed_messages_total",
        "counter",
        "Kafka messages skipped because they did not decode.",
        &kafka,
        |s| (source(s), s.1.errors.total() as f64),
    );
    out
}

/// Checkpoint counters and the figures of the last completed checkpoint.
fn render_checkpoints(out: &mut String, stats: &CheckpointStats) {
    let last = stats.last_completed();
    let scalar = |out: &mut String, name: &str, kind: &str, help: &str, value: f64| {
        Family::new(out, name, kind, help).sample(name, &[], value);
    };
    scalar(
        out,
        "eddy_checkpoints_completed_total",
        "counter",
        "Checkpoints completed since start.",
        stats.completed as f64,
    );
    scalar(
        out,
        "eddy_checkpoints_failed_total",
        "counter",
        "Checkpoints that failed since start.",
        stats.failed as f64,
    );
    if let Some(last) = last {
        scalar(
            out,
            "eddy_checkpoint_duration_seconds",
            "gauge",
            "How long the last completed checkpoint took, barrier to manifest.",
            last.duration.as_secs_f64(),
        );
        scalar(
            out,
            "eddy_checkpoint_written_bytes",
            "gauge",
            "Bytes the last completed checkpoint wrote (incremental).",
            last.bytes_written as f64,
        );
        scalar(
            out,
            "eddy_checkpoint_state_bytes",
            "gauge",
            "Bytes a recovery from the last completed checkpoint reads.",
            last.state_bytes as f64,
        );
        scalar(
            out,
            "eddy_checkpoint_last_completed_timestamp_seconds",
            "gauge",
            "When the last checkpoint completed (Unix time).",
            last.completed_unix_ms as f64 / 1e3,
        );
        scalar(
            out,
            "eddy_checkpoint_epoch",
            "gauge",
            "The epoch of the last completed checkpoint.",
            last.epoch as f64,
        );
    }
}
