//! The web page at the HTTP endpoint's `/`: sources, views and sinks, one
//! view's operator graph with live figures, charts of the last minutes and
//! the checkpoint history. The page ([`PAGE`], plain HTML and JavaScript
//! built into the binary) polls [`status_json`] at `/api/status` once a
//! second.

use serde_json::{json, Value};

use crate::engine::health::{operator_key, sink_key, source_key, view_key, Health, Monitor};

/// The page, served as is.
pub const PAGE: &str = include_str!("web/index.html");

fn millis(micros: Option<i64>) -> Option<i64> {
    micros.map(|us| us.div_euclid(1000))
}

/// Everything the page shows, as JSON.
pub fn status_json(health: &Health, monitor: &Monitor) -> Value {
    let sources: Vec<Value> = health
        .sources
        .iter()
        .map(|s| {
            let partitions: Vec<Value> = s
                .partitions
                .iter()
                .map(|((view, partition), p)| {
                    json!({
                        "view": view,
                        "partition": partition,
                        "next_offset": p.next_offset,
                        "high_offset": p.high_offset,
                        "lag": p.lag(),
                        "event_time_ms": millis(p.event_time),
                    })
                })
                .collect();
            json!({
                "name": s.name,
                "connector": s.connector,
                "topic": s.topic,
                "messages": s.messages,
                "bytes": s.bytes,
                "messages_per_second": monitor.rate(&source_key(&s.name, "messages")),
                "bytes_per_second": monitor.rate(&source_key(&s.name, "bytes")),
                "lag": s.lag(),
                "bad_messages": s.bad_messages,
                "watermark_ms": millis(s.watermark()),
                "partitions": partitions,
            })
        })
        .collect();
    let views: Vec<Value> = health
        .views
        .iter()
        .map(|v| {
            let operators: Vec<Value> = v
                .operators
                .iter()
                .map(|o| {
                    let rate = |what| monitor.rate(&operator_key(&v.name, o.id, what));
                    json!({
                        "id": format!("{:016x}", o.id),
                        "parent": o.parent.map(|p| format!("{p:016x}")),
                        "description": o.description,
                        "rows_in": o.stats.rows_in,
                        "rows_out": o.stats.rows_out,
                        "rows_in_per_second": rate("rows_in"),
                        "rows_out_per_second": rate("rows_out"),
                        "state_keys": o.stats.state_keys,
                        "state_bytes": health.checkpoints.operator_state_bytes(&v.name, o.id),
                        "late_rows": o.stats.late_rows,
                        "watermark_ms": millis(o.watermark),
                    })
                })
                .collect();
            json!({
                "name": v.name,
                "rows": v.rows,
                "status": v.status(),
                "changes_per_second": monitor.rate(&view_key(&v.name, "changes")),
                "state_keys": v.operators.iter().map(|o| o.stats.state_keys).sum::<u64>(),
                "late_rows": v.late_rows,
                "watermark_ms": millis(v.watermark),
                "freshness_ms": v.freshness.last_seconds.map(|s| s * 1e3),
                "operators": operators,
            })
        })
        .collect();
    let sinks: Vec<Value> = health
        .sinks
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "from": s.reads(),
                "target": s.target,
                "status": s.status.describe(),
                "rows_written": s.status.rows_written(),
                "rows_skipped": s.status.rejected().total(),
                "rows_per_second": monitor.rate(&sink_key(&s.name, "rows")),
                "retries": s.status.retries(),
                "committed_epoch": s.status.committed_epoch(),
                "lag_epochs": s.status.lag_epochs(health.epoch),
            })
        })
        .collect();
    let checkpoints: Vec<Value> = health
        .checkpoints
        .history
        .iter()
        .rev()
        .map(|c| {
            json!({
                "id": c.id,
                "epoch": c.epoch,
                "completed_ms": c.completed_unix_ms,
                "duration_ms": c.duration.as_secs_f64() * 1e3,
                "bytes_written": c.bytes_written,
                "state_bytes": c.state_bytes,
                "error": c.error,
            })
        })
        .collect();
    json!({
        "epoch": health.epoch,
        "unix_ms": health.unix_ms,
        "sources": sources,
        "views": views,
        "sinks": sinks,
        "checkpoints": {
            "completed": health.checkpoints.completed,
            "failed": health.checkpoints.failed,
            "history": checkpoints,
        },
        "charts": charts(health, monitor),
    })
}

/// The charts' series: throughput (messages/s of each Kafka source, and
/// changes/s of each view), lag per source, freshness per view (ms).
fn charts(health: &Health, monitor: &Monitor) -> Value {
    let series = |label: String, points: Vec<(i64, f64)>| {
        json!({
            "label": label,
            "points": points.into_iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>(),
        })
    };
    let mut throughput = Vec::new();
    let mut lag = Vec::new();
    for source in health.sources.iter().filter(|s| s.messages.is_some()) {
        throughput.push(series(
            format!("source {}", source.name),
            monitor.history(&source_key(&source.name, "messages"), true),
        ));
        lag.push(series(
            format!("source {}", source.name),
            monitor.history(&source_key(&source.name, "lag"), false),
        ));
    }
    let mut freshness = Vec::new();
    for view in &health.views {
        throughput.push(series(
            format!("view {}", view.name),
            monitor.history(&view_key(&view.name, "changes"), true),
        ));
        let points = monitor
            .history(&view_key(&view.name, "freshness"), false)
            .into_iter()
            .map(|(t, s)| (t, s * 1e3))
            .collect();
        freshness.push(series(format!("view {}", view.name), points));
    }
    json!({ "throughput": throughput, "lag": lag, "freshness": freshness })
}
