//! eddy's health as Prometheus text (exposition format 0.0.4), served at
//! `/metrics` by [`super::http`].
//!
//! Names follow Prometheus conventions: `eddy_` prefix, `_total` for
//! counters, units in names. Labels name the object (`view`, `operator`,
//! `sink`, `source`). Everything is read from the same status the system
//! tables show, so SQL and Prometheus agree.

use std::fmt::Write;
use std::sync::Arc;

use crate::catalog::SinkEntry;
use crate::engine::health::{Health, SourceHealth};
use crate::runtime::checkpoint::CheckpointStats;
use crate::runtime::{ViewStatus, FRESHNESS_BUCKETS};
use crate::stream::graph::OperatorStatus;

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

/// Seconds since the Unix epoch, from µs.
fn seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// The metrics text of `health`.
pub fn render(health: &Health) -> String {
    let Health {
        epoch,
        views,
        sinks,
        sources,
        checkpoints,
        ..
    } = health;
    let epoch = *epoch;
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
        "eddy_view_memory_bytes",
        "gauge",
        "Bytes of a view's rows held in memory (an estimate).",
        views,
        |v| (view(v), v.memory_bytes as f64),
    );
    family(
        &mut out,
        "eddy_view_spilled_bytes",
        "gauge",
        "Bytes of a view's rows moved to disk under the memory limit.",
        views,
        |v| (view(v), v.spilled_bytes as f64),
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
    let watermarked: Vec<(&ViewStatus, i64)> = views
        .iter()
        .filter_map(|v| Some((v, v.watermark?)))
        .collect();
    family(
        &mut out,
        "eddy_view_watermark_seconds",
        "gauge",
        "A view's event-time watermark (Unix time).",
        &watermarked,
        |(v, w)| (view(v), seconds(*w)),
    );
    render_freshness(&mut out, views);
    let operators: Vec<(&str, &OperatorStatus)> = views
        .iter()
        .flat_map(|v| v.operators.iter().map(move |o| (v.name.as_str(), o)))
        .collect();
    let operator = |o: &(&str, &OperatorStatus)| {
        vec![
            ("view", o.0.to_string()),
            ("operator_id", format!("{:016x}", o.1.id)),
        ]
    };
    family(
        &mut out,
        "eddy_operator_rows_in_total",
        "counter",
        "Rows an operator received.",
        &operators,
        |o| (operator(o), o.1.stats.rows_in as f64),
    );
    family(
        &mut out,
        "eddy_operator_rows_out_total",
        "counter",
        "Rows an operator emitted.",
        &operators,
        |o| (operator(o), o.1.stats.rows_out as f64),
    );
    family(
        &mut out,
        "eddy_operator_state_keys",
        "gauge",
        "Keys (groups, distinct values, window rows) an operator holds as state.",
        &operators,
        |o| (operator(o), o.1.stats.state_keys as f64),
    );
    let operator_bytes: Vec<(&(&str, &OperatorStatus), u64)> = operators
        .iter()
        .filter_map(|o| Some((o, checkpoints.operator_state_bytes(o.0, o.1.id)?)))
        .collect();
    family(
        &mut out,
        "eddy_operator_state_bytes",
        "gauge",
        "Bytes of an operator's state in the last completed checkpoint (base and deltas).",
        &operator_bytes,
        |(o, bytes)| (operator(o), *bytes as f64),
    );
    let spilling: Vec<(&(&str, &OperatorStatus), crate::state::windowed::SpillStats)> = operators
        .iter()
        .filter_map(|o| Some((o, o.1.spill?)))
        .collect();
    family(
        &mut out,
        "eddy_operator_memory_bytes",
        "gauge",
        "Bytes of an operator's spillable state held in memory (an estimate).",
        &spilling,
        |(o, s)| (operator(o), s.memory_bytes as f64),
    );
    family(
        &mut out,
        "eddy_operator_spilled_keys",
        "gauge",
        "Keys of an operator's state moved to disk under the memory limit.",
        &spilling,
        |(o, s)| (operator(o), s.cold_keys as f64),
    );
    family(
        &mut out,
        "eddy_operator_spilled_bytes",
        "gauge",
        "Bytes of the files holding an operator's state moved to disk.",
        &spilling,
        |(o, s)| (operator(o), s.disk_bytes as f64),
    );
    family(
        &mut out,
        "eddy_operator_disk_reads_total",
        "counter",
        "Lookups of an operator's state that missed memory and went to disk.",
        &spilling,
        |(o, s)| (operator(o), s.disk_reads as f64),
    );
    family(
        &mut out,
        "eddy_operator_disk_hits_total",
        "counter",
        "Lookups that went to disk and found the key there (the rest were new keys).",
        &spilling,
        |(o, s)| (operator(o), s.disk_hits as f64),
    );
    family(
        &mut out,
        "eddy_operator_late_rows_total",
        "counter",
        "Changes an operator dropped because they arrived after their window closed.",
        &operators,
        |o| (operator(o), o.1.stats.late_rows as f64),
    );
    let operator_watermarks: Vec<(&(&str, &OperatorStatus), i64)> = operators
        .iter()
        .filter_map(|o| Some((o, o.1.watermark?)))
        .collect();
    family(
        &mut out,
        "eddy_operator_watermark_seconds",
        "gauge",
        "The event-time watermark an operator last passed on (Unix time).",
        &operator_watermarks,
        |(o, w)| (operator(o), seconds(*w)),
    );
    let sink = |s: &Arc<SinkEntry>| vec![("sink", s.name.clone()), ("view", s.reads())];
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
        "eddy_sink_rows_skipped_total",
        "counter",
        "Rows a sink skipped because its target refused them (on_error = 'skip').",
        sinks,
        |s| (sink(s), s.status.rejected().total() as f64),
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
        |s| (sink(s), s.status.lag_epochs(epoch) as f64),
    );
    family(
        &mut out,
        "eddy_sink_retries_total",
        "counter",
        "Errors a sink retried after (its target was unavailable).",
        sinks,
        |s| (sink(s), s.status.retries() as f64),
    );
    let committed: Vec<(&Arc<SinkEntry>, i64)> = sinks
        .iter()
        .filter_map(|s| Some((s, s.status.committed_unix_ms()?)))
        .collect();
    family(
        &mut out,
        "eddy_sink_last_commit_timestamp_seconds",
        "gauge",
        "When a sink last made an epoch durable (Unix time).",
        &committed,
        |(s, ms)| (sink(s), *ms as f64 / 1e3),
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
    render_sources(&mut out, sources);
    out
}

/// Per source: what its readers read, skipped and have left to read.
fn render_sources(out: &mut String, sources: &[SourceHealth]) {
    let counted: Vec<(&SourceHealth, u64, u64)> = sources
        .iter()
        .filter_map(|s| Some((s, s.messages?, s.bytes?)))
        .collect();
    let source = |s: &SourceHealth| {
        vec![
            ("source", s.name.clone()),
            ("topic", s.topic.clone().unwrap_or_default()),
        ]
    };
    family(
        out,
        "eddy_source_messages_total",
        "counter",
        "Kafka messages read (by all the source's readers).",
        &counted,
        |(s, messages, _)| (source(s), *messages as f64),
    );
    family(
        out,
        "eddy_source_bytes_total",
        "counter",
        "Kafka message payload bytes read (by all the source's readers).",
        &counted,
        |(s, _, bytes)| (source(s), *bytes as f64),
    );
    family(
        out,
        "eddy_source_malformed_messages_total",
        "counter",
        "Kafka messages skipped as bad (each counted once per source; kept across restarts).",
        &counted,
        |(s, _, _)| (source(s), s.bad_messages as f64),
    );
    let partitions: Vec<(&str, &(String, i32), i64)> = sources
        .iter()
        .flat_map(|s| {
            s.partitions
                .iter()
                .filter_map(|(key, p)| Some((s.name.as_str(), key, p.lag()?)))
        })
        .collect();
    family(
        out,
        "eddy_source_lag_messages",
        "gauge",
        "Messages in a partition that a view's reader has not read yet.",
        &partitions,
        |(source, (view, partition), lag)| {
            (
                vec![
                    ("source", source.to_string()),
                    ("view", view.clone()),
                    ("partition", partition.to_string()),
                ],
                *lag as f64,
            )
        },
    );
    let watermarks: Vec<(&str, &str, i64)> = sources
        .iter()
        .flat_map(|s| {
            s.watermarks
                .iter()
                .map(|(view, w)| (s.name.as_str(), view.as_str(), *w))
        })
        .collect();
    family(
        out,
        "eddy_source_watermark_seconds",
        "gauge",
        "A source reader's event-time watermark (Unix time).",
        &watermarks,
        |(source, view, w)| {
            (
                vec![("source", source.to_string()), ("view", view.to_string())],
                seconds(*w),
            )
        },
    );
}

/// Per view: a histogram of how long changes took from arrival to being
/// readable.
fn render_freshness(out: &mut String, views: &[ViewStatus]) {
    let name = "eddy_view_freshness_seconds";
    let mut family = Family::new(
        out,
        name,
        "histogram",
        "Time from a change arriving (a write, or a source reader receiving it) to its effect being readable in a view.",
    );
    for view in views {
        let freshness = &view.freshness;
        for (bound, count) in FRESHNESS_BUCKETS.iter().zip(freshness.buckets) {
            family.sample(
                &format!("{name}_bucket"),
                &[("view", &view.name), ("le", &bound.to_string())],
                count,
            );
        }
        family.sample(
            &format!("{name}_bucket"),
            &[("view", &view.name), ("le", "+Inf")],
            freshness.count,
        );
        family.sample(
            &format!("{name}_sum"),
            &[("view", &view.name)],
            freshness.sum_seconds,
        );
        family.sample(
            &format!("{name}_count"),
            &[("view", &view.name)],
            freshness.count,
        );
    }
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
