//! The librdkafka settings a Kafka source or sink may give as
//! `properties.<name>`: an allow-list, not a pass-through.
//!
//! librdkafka has settings that load code into the process
//! (`plugin.library.paths`, `ssl.engine.location`, `ssl.providers`), run a
//! command (`sasl.kerberos.kinit.cmd`), write files (`offset.store.path`),
//! fetch URLs (`sasl.oauthbearer.token.endpoint.url`) or read files
//! (`ssl.*.location`, `sasl.kerberos.keytab`, ...). A client that may
//! create a source must not reach any of that, so every setting is one of:
//! - a plain value, taken as given;
//! - a file, allowed only inside the operator's directories
//!   ([`ConnectorPolicy::check_file`]) and given to librdkafka resolved;
//! - set by eddy itself (it depends on the value), refused with the eddy
//!   option to use instead;
//! - anything else (not listed here): refused, naming the setting.

use std::collections::BTreeMap;

use crate::connectors::policy::ConnectorPolicy;
use crate::error::{EddyError, Result};

/// How a setting's value is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    /// A file path (resolved and checked against the policy); `probe` is
    /// allowed for `ssl.ca.location` (the system's CA store).
    File,
}

/// Every librdkafka setting a user may give (librdkafka 2.12's
/// CONFIGURATION.md, less what reads, writes or runs something on the
/// server, and less what eddy sets).
const ALLOWED: &[(&str, Kind)] = &[
    // Connection
    ("bootstrap.servers", Kind::Value),
    ("client.id", Kind::Value),
    ("client.rack", Kind::Value),
    ("client.dns.lookup", Kind::Value),
    ("broker.address.family", Kind::Value),
    ("broker.address.ttl", Kind::Value),
    ("socket.timeout.ms", Kind::Value),
    ("socket.connection.setup.timeout.ms", Kind::Value),
    ("socket.send.buffer.bytes", Kind::Value),
    ("socket.receive.buffer.bytes", Kind::Value),
    ("socket.keepalive.enable", Kind::Value),
    ("socket.nagle.disable", Kind::Value),
    ("socket.max.fails", Kind::Value),
    ("connections.max.idle.ms", Kind::Value),
    ("reconnect.backoff.ms", Kind::Value),
    ("reconnect.backoff.max.ms", Kind::Value),
    ("reconnect.backoff.jitter.ms", Kind::Value),
    ("retry.backoff.ms", Kind::Value),
    ("retry.backoff.max.ms", Kind::Value),
    ("api.version.request", Kind::Value),
    ("api.version.request.timeout.ms", Kind::Value),
    ("api.version.fallback.ms", Kind::Value),
    ("broker.version.fallback", Kind::Value),
    ("allow.auto.create.topics", Kind::Value),
    ("message.max.bytes", Kind::Value),
    ("message.copy.max.bytes", Kind::Value),
    ("receive.message.max.bytes", Kind::Value),
    ("max.in.flight.requests.per.connection", Kind::Value),
    ("max.in.flight", Kind::Value),
    ("metadata.max.age.ms", Kind::Value),
    ("metadata.recovery.strategy", Kind::Value),
    ("metadata.recovery.rebootstrap.trigger.ms", Kind::Value),
    ("topic.metadata.refresh.interval.ms", Kind::Value),
    ("topic.metadata.refresh.fast.interval.ms", Kind::Value),
    ("topic.metadata.refresh.sparse", Kind::Value),
    ("topic.metadata.propagation.max.ms", Kind::Value),
    ("log_level", Kind::Value),
    ("log.connection.close", Kind::Value),
    // TLS
    ("security.protocol", Kind::Value),
    ("ssl.cipher.suites", Kind::Value),
    ("ssl.curves.list", Kind::Value),
    ("ssl.sigalgs.list", Kind::Value),
    ("ssl.key.location", Kind::File),
    ("ssl.key.password", Kind::Value),
    ("ssl.key.pem", Kind::Value),
    ("ssl.certificate.location", Kind::File),
    ("ssl.certificate.pem", Kind::Value),
    ("ssl.ca.location", Kind::File),
    ("ssl.ca.pem", Kind::Value),
    ("ssl.crl.location", Kind::File),
    ("ssl.keystore.location", Kind::File),
    ("ssl.keystore.password", Kind::Value),
    ("enable.ssl.certificate.verification", Kind::Value),
    ("ssl.endpoint.identification.algorithm", Kind::Value),
    // SASL (not OAUTHBEARER's OIDC, which fetches URLs and files)
    ("sasl.mechanism", Kind::Value),
    ("sasl.mechanisms", Kind::Value),
    ("sasl.username", Kind::Value),
    ("sasl.password", Kind::Value),
    ("sasl.kerberos.service.name", Kind::Value),
    ("sasl.kerberos.principal", Kind::Value),
    ("sasl.kerberos.keytab", Kind::File),
    ("sasl.kerberos.min.time.before.relogin", Kind::Value),
    ("sasl.oauthbearer.config", Kind::Value),
    ("enable.sasl.oauthbearer.unsecure.jwt", Kind::Value),
    // Consumer
    ("session.timeout.ms", Kind::Value),
    ("heartbeat.interval.ms", Kind::Value),
    ("queued.min.messages", Kind::Value),
    ("queued.max.messages.kbytes", Kind::Value),
    ("fetch.wait.max.ms", Kind::Value),
    ("fetch.message.max.bytes", Kind::Value),
    ("max.partition.fetch.bytes", Kind::Value),
    ("fetch.max.bytes", Kind::Value),
    ("fetch.min.bytes", Kind::Value),
    ("fetch.error.backoff.ms", Kind::Value),
    ("check.crcs", Kind::Value),
    // Producer
    ("acks", Kind::Value),
    ("request.required.acks", Kind::Value),
    ("request.timeout.ms", Kind::Value),
    ("message.timeout.ms", Kind::Value),
    ("delivery.timeout.ms", Kind::Value),
    ("linger.ms", Kind::Value),
    ("queue.buffering.max.ms", Kind::Value),
    ("queue.buffering.max.messages", Kind::Value),
    ("queue.buffering.max.kbytes", Kind::Value),
    ("batch.num.messages", Kind::Value),
    ("batch.size", Kind::Value),
    ("compression.type", Kind::Value),
    ("compression.codec", Kind::Value),
    ("compression.level", Kind::Value),
    ("enable.idempotence", Kind::Value),
    ("message.send.max.retries", Kind::Value),
    ("retries", Kind::Value),
    ("partitioner", Kind::Value),
    ("sticky.partitioning.linger.ms", Kind::Value),
];

/// Settings eddy sets for its readers and sinks, each with what to use
/// instead (a user's value would break what eddy relies on).
const SET_BY_EDDY: &[(&str, &str)] = &[
    (
        "group.id",
        "eddy assigns partitions itself and keeps offsets in checkpoints",
    ),
    ("enable.auto.commit", "offsets live in eddy's checkpoints"),
    (
        "enable.auto.offset.store",
        "offsets live in eddy's checkpoints",
    ),
    ("auto.offset.reset", "use scan.startup.mode"),
    (
        "enable.partition.eof",
        "eddy needs partition ends for backfill progress",
    ),
    (
        "statistics.interval.ms",
        "eddy reads the statistics for lag and progress",
    ),
    (
        "isolation.level",
        "a sink reads its own topic read_committed to resume exactly once",
    ),
    (
        "transactional.id",
        "a Kafka sink's transactions are named after the sink",
    ),
    ("transaction.timeout.ms", "set by the Kafka sink"),
    ("enable.metrics.push", "set by eddy"),
];

/// The librdkafka settings in a source's or sink's options: `own` are the
/// connector's own options (`topic`, ...), `properties.bootstrap.server`
/// is `bootstrap.servers`, and every other option must be
/// `properties.<an allowed setting>`. `what` names the object in errors.
pub fn client_settings(
    options: &BTreeMap<String, String>,
    own: &[&str],
    what: &str,
    policy: &ConnectorPolicy,
) -> Result<BTreeMap<String, String>> {
    let mut client = BTreeMap::new();
    for (name, value) in options {
        let setting = match name.as_str() {
            "connector" => continue,
            name if own.contains(&name) => continue,
            "properties.bootstrap.server" | "properties.bootstrap.servers" => "bootstrap.servers",
            other => other.strip_prefix("properties.").ok_or_else(|| {
                EddyError::InvalidParameter(format!("unknown option {other} for {what}"))
            })?,
        };
        if let Some((_, instead)) = SET_BY_EDDY.iter().find(|(s, _)| *s == setting) {
            return Err(EddyError::InvalidParameter(format!(
                "option {name} cannot be set for {what}: {instead}"
            )));
        }
        let kind = ALLOWED
            .iter()
            .find(|(s, _)| *s == setting)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                EddyError::InsufficientPrivilege(format!(
                    "option {name} is not allowed for {what}: eddy passes on only the \
                     librdkafka settings it knows to be safe (see docs/sql.md, Kafka)"
                ))
            })?;
        let value = match kind {
            Kind::Value => value.clone(),
            Kind::File if setting == "ssl.ca.location" && value == "probe" => value.clone(),
            Kind::File => policy
                .check_file(name, value)?
                .to_string_lossy()
                .into_owned(),
        };
        client.insert(setting.to_string(), value);
    }
    Ok(client)
}

/// The `host:port` pairs of `bootstrap.servers` (a broker without a port
/// is on 9092), to be checked against `--allow-connect`.
pub fn bootstrap_hosts(client: &BTreeMap<String, String>) -> Vec<(String, u16)> {
    let Some(servers) = client.get("bootstrap.servers") else {
        return vec![];
    };
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            let server = server
                .split_once("://")
                .map_or(server, |(_, address)| address);
            match server.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') => (
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    port.parse().unwrap_or(9092),
                ),
                _ => (server.to_string(), 9092),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::connectors::test_options as options;

    #[test]
    fn only_safe_settings_pass() {
        let policy = ConnectorPolicy::default();
        let settings = client_settings(
            &options(&[
                ("connector", "kafka"),
                ("topic", "t"),
                ("properties.bootstrap.server", "127.0.0.1:9092"),
                ("properties.security.protocol", "sasl_ssl"),
                ("properties.sasl.password", "x"),
                ("properties.ssl.ca.location", "probe"),
            ]),
            &["topic"],
            "a Kafka source",
            &policy,
        )
        .unwrap();
        assert_eq!(settings["bootstrap.servers"], "127.0.0.1:9092");
        assert_eq!(settings.len(), 4);

        for (setting, sqlstate) in [
            ("properties.plugin.library.paths", "42501"),
            ("properties.sasl.kerberos.kinit.cmd", "42501"),
            ("properties.ssl.engine.location", "42501"),
            ("properties.ssl.providers", "42501"),
            ("properties.offset.store.path", "42501"),
            ("properties.sasl.oauthbearer.token.endpoint.url", "42501"),
            ("properties.interceptors", "42501"),
            ("properties.ssl.ca.location", "42501"),
            ("properties.sasl.kerberos.keytab", "42501"),
            ("properties.group.id", "22023"),
            ("properties.enable.partition.eof", "22023"),
            ("tpoic", "22023"),
        ] {
            let e = client_settings(
                &options(&[(setting, "/tmp/x.so")]),
                &[],
                "a Kafka source",
                &policy,
            )
            .unwrap_err();
            assert_eq!(e.sqlstate(), sqlstate, "{setting}: {e}");
        }
    }

    #[test]
    fn bootstrap_servers_split_into_hosts_and_ports() {
        let settings = options(&[(
            "bootstrap.servers",
            "a:1, b , [::1]:3,SASL_SSL://c.example:4",
        )]);
        assert_eq!(
            bootstrap_hosts(&settings),
            vec![
                ("a".to_string(), 1),
                ("b".to_string(), 9092),
                ("::1".to_string(), 3),
                ("c.example".to_string(), 4)
            ]
        );
    }
}
