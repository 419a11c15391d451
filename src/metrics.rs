//! Prometheus metrics: one process-wide recorder and the names of every
//! metric the server emits.
//!
//! Code records through the `metrics` macros with the constants in [`names`]
//! and the label keys in [`labels`], e.g.
//! `metrics::counter!(names::FRAMES_IN, labels::COMMAND => "SEND").increment(1)`.
//! `GET /metrics` renders [`install`]'s handle.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names. All are prefixed `stompline_`.
pub mod names {
    /// Gauge: open STOMP connections, label `transport` (`ws` | `tcp`).
    pub const CONNECTIONS: &str = "stompline_connections";
    /// Counter: accepted STOMP connections, label `transport`.
    pub const CONNECTIONS_ACCEPTED: &str = "stompline_connections_accepted_total";
    /// Counter: frames received, label `command` (`SEND`, `SUBSCRIBE`, …).
    pub const FRAMES_IN: &str = "stompline_frames_received_total";
    /// Counter: frames sent, label `command` (`MESSAGE`, `RECEIPT`, …).
    pub const FRAMES_OUT: &str = "stompline_frames_sent_total";
    /// Counter: MESSAGE frames handed to subscribers (one per subscriber).
    pub const DELIVERIES: &str = "stompline_deliveries_total";
    /// Counter: connections closed because their outbound queue overflowed.
    pub const SLOW_CONSUMER_DISCONNECTS: &str = "stompline_slow_consumer_disconnects_total";
    /// Counter: failed authentications, label `reason`
    /// (`bad_credentials`, `bad_token`, `expired`, `revoked`, …).
    pub const AUTH_FAILURES: &str = "stompline_auth_failures_total";
    /// Counter: protocol violations answered with ERROR, label `kind`
    /// (`bad_frame`, `frame_too_large`, `unknown_command`, `no_connect`, …).
    pub const PROTOCOL_ERRORS: &str = "stompline_protocol_errors_total";
    /// Counter: connections closed for missing heart-beats.
    pub const HEARTBEAT_TIMEOUTS: &str = "stompline_heartbeat_timeouts_total";
    /// Counter: configured limits reached, label `kind` (`frame_bytes`,
    /// `headers`, `subscriptions`, `connections`, `connections_per_user`,
    /// `inbound_rate`, `chat_rate`, `queue_hold`, …).
    pub const LIMITS_HIT: &str = "stompline_limits_hit_total";
    /// Counter: chat messages persisted (new, not duplicates).
    pub const MESSAGES_PERSISTED: &str = "stompline_messages_persisted_total";
    /// Histogram: messages per persister batch.
    pub const PERSIST_BATCH: &str = "stompline_persist_batch_size";
    /// Histogram: seconds one persister batch spent in the store (the
    /// transaction, commit included).
    pub const PERSIST_SECONDS: &str = "stompline_persist_seconds";
    /// Histogram: seconds from a batch's commit until its events and
    /// acknowledgements were handed to the relay.
    pub const PUBLISH_SECONDS: &str = "stompline_persist_publish_seconds";
    /// Counter: persister batches that failed and were retried.
    pub const PERSIST_FAILURES: &str = "stompline_persist_failures_total";
    /// Counter: outbox rows published by the sweeper (left behind by a
    /// crash or a failed publish, or written by a non-message change).
    pub const OUTBOX_SWEPT: &str = "stompline_outbox_swept_total";
    /// Counter: relay publish failures.
    pub const RELAY_PUBLISH_FAILURES: &str = "stompline_relay_publish_failures_total";
    /// Counter: sequence gaps filled from the store by a gateway.
    pub const GAP_FILLS: &str = "stompline_gap_fills_total";
    /// Counter: mail and SMS delivered, label `channel` (`smtp`,
    /// `sms_webhook`, `mailbox`).
    pub const MAIL_SENT: &str = "stompline_mail_sent_total";
    /// Counter: deliveries given up after every attempt failed, label
    /// `channel`.
    pub const MAIL_FAILED: &str = "stompline_mail_failed_total";
    /// Counter: delivery attempts that failed and were retried, label
    /// `channel`.
    pub const MAIL_RETRIED: &str = "stompline_mail_retried_total";
    /// Counter: requests refused by a rate limit, label `kind` (`login`,
    /// `register`, `request_otp`, `verify_otp`, `stomp_connect`, …).
    pub const RATE_LIMITED: &str = "stompline_rate_limited_total";
    /// Gauge: outbox rows not yet published and deleted (sampled by the
    /// sweeper).
    pub const OUTBOX_DEPTH: &str = "stompline_outbox_depth";
    /// Gauge: records of the messages topic this instance's persister has
    /// not committed yet, label `partition` (`bus = "kafka"`).
    pub const KAFKA_CONSUMER_LAG: &str = "stompline_kafka_consumer_lag";
    /// Gauge: the sum of [`KAFKA_CONSUMER_LAG`] over this instance's
    /// partitions.
    pub const KAFKA_CONSUMER_LAG_TOTAL: &str = "stompline_kafka_consumer_lag_total";
    /// Counter: consumer-group rebalances seen, label `kind`
    /// (`assign` | `revoke`).
    pub const KAFKA_REBALANCES: &str = "stompline_kafka_rebalances_total";
    /// Counter: records Kafka did not acknowledge (sends answered with an
    /// error, domain events left in the outbox).
    pub const KAFKA_PRODUCE_FAILURES: &str = "stompline_kafka_produce_failures_total";
    /// Counter: Kafka clients replaced because they could not recover by
    /// themselves (a broker that lost its state), label `client`
    /// (`producer` | `consumer`).
    pub const KAFKA_CLIENT_REBUILDS: &str = "stompline_kafka_client_rebuilds_total";
    /// Counter: times this instance rejoined the consumer group because a
    /// partition it does not own made no progress for long while its own
    /// did (a coordinator that left a dead member's partitions ownerless).
    pub const KAFKA_STALL_REJOINS: &str = "stompline_kafka_stall_rejoins_total";
    /// Counter: records of the messages topic that were not a readable send
    /// command (skipped).
    pub const KAFKA_MALFORMED: &str = "stompline_kafka_malformed_records_total";
    /// Counter: relay connections re-established after a loss, label
    /// `backend` (`redis` | `amqp`).
    pub const RELAY_RECONNECTS: &str = "stompline_relay_reconnects_total";
    /// Counter: conversation subscriptions re-read from the store after a
    /// relay reconnect.
    pub const RELAY_RESYNCS: &str = "stompline_relay_resyncs_total";
    /// Counter: messages a relay resync found in the store (delivered unless
    /// the subscriber already had them).
    pub const RELAY_RESYNC_MESSAGES: &str = "stompline_relay_resync_messages_total";
}

/// Label keys used with [`names`].
pub mod labels {
    /// `ws` or `tcp`.
    pub const TRANSPORT: &str = "transport";
    /// A STOMP command.
    pub const COMMAND: &str = "command";
    /// Why authentication failed.
    pub const REASON: &str = "reason";
    /// Which protocol error or limit.
    pub const KIND: &str = "kind";
    /// Mail delivery channel.
    pub const CHANNEL: &str = "channel";
    /// Which relay backend.
    pub const BACKEND: &str = "backend";
}

/// How often histogram/summary storage is compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the global `metrics` recorder (once
/// per process) and returns a handle that renders the text exposition.
/// Later calls return the same handle, so tests that start several servers
/// in one process share one registry.
///
/// If some other recorder was installed globally first, the returned handle
/// belongs to a private recorder and renders only descriptions.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(error) => {
                    tracing::warn!(%error, "another metrics recorder is installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start metrics upkeep thread");
    }
}

fn describe() {
    describe_gauge!(
        names::CONNECTIONS,
        Unit::Count,
        "Open STOMP connections by transport."
    );
    describe_counter!(
        names::CONNECTIONS_ACCEPTED,
        Unit::Count,
        "Accepted STOMP connections by transport."
    );
    describe_counter!(
        names::FRAMES_IN,
        Unit::Count,
        "STOMP frames received by command."
    );
    describe_counter!(
        names::FRAMES_OUT,
        Unit::Count,
        "STOMP frames sent by command."
    );
    describe_counter!(
        names::DELIVERIES,
        Unit::Count,
        "MESSAGE frames delivered to subscribers."
    );
    describe_counter!(
        names::SLOW_CONSUMER_DISCONNECTS,
        Unit::Count,
        "Connections closed because their outbound queue overflowed."
    );
    describe_counter!(
        names::AUTH_FAILURES,
        Unit::Count,
        "Failed authentications by reason."
    );
    describe_counter!(
        names::PROTOCOL_ERRORS,
        Unit::Count,
        "Protocol violations answered with ERROR, by kind."
    );
    describe_counter!(
        names::HEARTBEAT_TIMEOUTS,
        Unit::Count,
        "Connections closed for missing heart-beats."
    );
    describe_counter!(
        names::MESSAGES_PERSISTED,
        Unit::Count,
        "Chat messages persisted."
    );
    metrics::describe_histogram!(
        names::PERSIST_BATCH,
        Unit::Count,
        "Messages per persister batch."
    );
    metrics::describe_histogram!(
        names::PERSIST_SECONDS,
        Unit::Seconds,
        "Seconds a persister batch spent in the store, commit included."
    );
    metrics::describe_histogram!(
        names::PUBLISH_SECONDS,
        Unit::Seconds,
        "Seconds from a batch's commit until its events were handed to the relay."
    );
    describe_counter!(
        names::PERSIST_FAILURES,
        Unit::Count,
        "Persister batches that failed and were retried."
    );
    describe_counter!(
        names::OUTBOX_SWEPT,
        Unit::Count,
        "Outbox rows published by the sweeper."
    );
    describe_counter!(
        names::RELAY_PUBLISH_FAILURES,
        Unit::Count,
        "Relay publish failures."
    );
    describe_counter!(
        names::GAP_FILLS,
        Unit::Count,
        "Sequence gaps filled from the store."
    );
    describe_gauge!(
        names::OUTBOX_DEPTH,
        Unit::Count,
        "Outbox rows not yet published."
    );
    describe_gauge!(
        names::KAFKA_CONSUMER_LAG,
        Unit::Count,
        "Uncommitted records of the messages topic, by partition."
    );
    describe_gauge!(
        names::KAFKA_CONSUMER_LAG_TOTAL,
        Unit::Count,
        "Uncommitted records of the messages topic on this instance's partitions."
    );
    describe_counter!(
        names::KAFKA_REBALANCES,
        Unit::Count,
        "Consumer-group rebalances, by kind."
    );
    describe_counter!(
        names::KAFKA_PRODUCE_FAILURES,
        Unit::Count,
        "Records Kafka did not acknowledge."
    );
    describe_counter!(
        names::KAFKA_CLIENT_REBUILDS,
        Unit::Count,
        "Kafka clients replaced after they could not recover, by client."
    );
    describe_counter!(
        names::KAFKA_STALL_REJOINS,
        Unit::Count,
        "Rejoins of the consumer group for partitions left without progress elsewhere."
    );
    describe_counter!(
        names::KAFKA_MALFORMED,
        Unit::Count,
        "Unreadable records skipped on the messages topic."
    );
    describe_counter!(
        names::RELAY_RECONNECTS,
        Unit::Count,
        "Relay connections re-established after a loss, by backend."
    );
    describe_counter!(
        names::RELAY_RESYNCS,
        Unit::Count,
        "Conversation subscriptions re-read from the store after a relay reconnect."
    );
    describe_counter!(
        names::RELAY_RESYNC_MESSAGES,
        Unit::Count,
        "Messages found in the store by relay resyncs."
    );
    describe_counter!(
        names::LIMITS_HIT,
        Unit::Count,
        "Configured limits reached, by kind."
    );
    describe_counter!(
        names::MAIL_SENT,
        Unit::Count,
        "Mail and SMS delivered, by channel."
    );
    describe_counter!(
        names::MAIL_FAILED,
        Unit::Count,
        "Deliveries given up after every attempt failed, by channel."
    );
    describe_counter!(
        names::MAIL_RETRIED,
        Unit::Count,
        "Delivery attempts that failed and were retried, by channel."
    );
    describe_counter!(
        names::RATE_LIMITED,
        Unit::Count,
        "Requests refused by a rate limit, by kind."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_renders_recorded_metrics() {
        let first = install();
        let second = install();
        metrics::counter!(names::AUTH_FAILURES, labels::REASON => "bad_credentials").increment(1);
        metrics::gauge!(names::CONNECTIONS, labels::TRANSPORT => "tcp").set(2.0);
        for handle in [first, second] {
            let text = handle.render();
            assert!(
                text.contains("stompline_auth_failures_total{reason=\"bad_credentials\"}"),
                "{text}"
            );
            assert!(
                text.contains("stompline_connections{transport=\"tcp\"} 2"),
                "{text}"
            );
            assert!(
                text.contains("# HELP stompline_auth_failures_total"),
                "{text}"
            );
        }
    }
}
