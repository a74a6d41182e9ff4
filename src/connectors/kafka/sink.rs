//! Kafka sinks (not built yet).
