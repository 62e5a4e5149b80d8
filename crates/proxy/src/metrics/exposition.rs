//! The Prometheus text exposition of the counters, made when `/metrics` is scraped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{EXPIRY_BUCKETS, Flow, FrameKind, Gauges, LATENCY_SAMPLE_EVERY, Metrics};

impl Metrics {
    /// The Prometheus text exposition of every metric, with the gauges given.
    #[must_use]
    pub fn render(self: &Arc<Self>, gauges: Gauges) -> String {
        let mut registry = Registry::with_prefix("ws_proxy");
        registry.register_collector(Box::new(Scrape { metrics: Arc::clone(self), gauges }));
        let mut text = String::new();
        // Writing to a String cannot fail, and every collector below only writes.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The metrics and gauges of one scrape.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    gauges: Gauges,
}

type Labels<'a> = [(&'static str, &'a str); 1];

impl Scrape {
    fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
        e.encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
        e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
    }

    fn labelled<L: EncodeLabelSet>(
        e: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        values: &[(L, u64)],
    ) -> std::fmt::Result {
        let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in values {
            metric.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }

    fn by<K: ToString>(key: &'static str, entries: Vec<(K, u64)>) -> Vec<([(&'static str, String); 1], u64)> {
        entries.into_iter().map(|(k, v)| ([(key, k.to_string())], v)).collect()
    }

    fn traffic(&self, flow: fn(&Flow) -> u64) -> Vec<([(&'static str, &'static str); 2], u64)> {
        let m = &self.metrics;
        [("in", &m.received), ("out", &m.relayed)]
            .into_iter()
            .flat_map(|(direction, traffic)| {
                FrameKind::ALL
                    .map(|kind| ([("direction", direction), ("type", kind.label())], flow(traffic.of(kind))))
            })
            .collect()
    }
}

impl Scrape {
    /// The time left to the members' certificates (a histogram made at the scrape), the
    /// soonest of them, and the server's and the CAs' certificates.
    fn certificates(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let Gauges { rooms, trust, now, .. } = &self.gauges;
        let expiry = &rooms.expiry;
        let bounds = EXPIRY_BUCKETS.iter().map(|&b| b as f64).chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(expiry.buckets).collect();
        e.encode_descriptor(
            "peer_certificate_expiry_seconds",
            "Time left until notAfter of the connected members' certificates, at the scrape (buckets: 1, 7, 14, 30, 90, 180, 365 days).",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(expiry.sum as f64, rooms.members, &buckets, None)?;
        if let Some(soonest) = expiry.soonest {
            e.encode_descriptor(
                "peer_certificate_soonest_expiry_seconds",
                "Time left until the soonest notAfter among the connected members' certificates.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&soonest)?;
        }
        if let Some(server) = &trust.server {
            e.encode_descriptor(
                "server_certificate_expiry_seconds",
                "Time left until notAfter of the proxy's own certificate (tls.server_cert).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(server.not_after - now))?;
        }
        let mut cas = e.encode_descriptor(
            "ca_certificate_expiry_seconds",
            "Time left until notAfter of each trusted CA certificate (tls.client_ca), by subject and serial.",
            None,
            MetricType::Gauge,
        )?;
        for ca in &trust.cas {
            let labels = [("subject", ca.subject.as_str()), ("serial", ca.serial.as_str())];
            cas.encode_family(&labels)?.encode_gauge(&(ca.not_after - now))?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.metrics;
        let version: Labels = [("version", env!("CARGO_PKG_VERSION"))];
        e.encode_descriptor("build_info", "The proxy's version; always 1.", None, MetricType::Gauge)?
            .encode_family(&version)?
            .encode_gauge(&1u64)?;
        Self::gauge(
            &mut e,
            "connections_open",
            "Accepted connections not yet ended.",
            Metrics::get(&m.connections_open),
        )?;
        Self::counter(
            &mut e,
            "connections_accepted",
            "Connections accepted under max_connections.",
            Metrics::get(&m.connections_accepted),
        )?;
        let mut outcomes = m.outcomes.entries();
        outcomes.push(("refused", Metrics::get(&m.connections_refused)));
        Self::labelled(
            &mut e,
            "connections",
            "Connections by outcome: refused at max_connections, tls_failed, upgrade_refused, upgrade_incomplete, or the reason a WebSocket ended.",
            &Self::by("outcome", outcomes),
        )?;
        Self::gauge(
            &mut e,
            "tls_handshakes_in_flight",
            "TLS handshakes being worked on (at most limits.max_handshakes_in_flight).",
            Metrics::get(&m.handshakes_in_flight),
        )?;
        Self::gauge(
            &mut e,
            "tls_handshakes_queued",
            "Accepted connections waiting for a handshake slot.",
            Metrics::get(&m.handshakes_queued),
        )?;
        Self::labelled(
            &mut e,
            "tls_handshakes",
            "Completed TLS handshakes: full, or resumed from a session ticket or the session cache.",
            &[
                ([("kind", "full")], Metrics::get(&m.handshakes_full)),
                ([("kind", "resumed")], Metrics::get(&m.handshakes_resumed)),
            ],
        )?;
        Self::labelled(
            &mut e,
            "tls_handshake_failures",
            "Failed TLS handshakes by reason.",
            &Self::by("reason", m.handshake_failures.entries()),
        )?;
        Self::labelled(
            &mut e,
            "upgrade_refusals",
            "Upgrade requests refused, by HTTP status.",
            &Self::by("status", m.upgrade_refusals.entries()),
        )?;
        Self::labelled(
            &mut e,
            "auth_hook_checks",
            "Answers of the authorization hook: allowed, denied (4xx), either from the cache (_cached), or unavailable (refused: fail closed).",
            &Self::by("result", m.auth_hook_checks.entries()),
        )?;
        Self::labelled(
            &mut e,
            "identity_conflicts",
            "Newcomers with the certificate of a member of their room, by outcome: kept (the member answered its probe: 409), replaced, refused (same_identity = refuse: 409), refused_at_hello.",
            &Self::by("outcome", m.identity_conflicts.entries()),
        )?;
        Self::counter(
            &mut e,
            "certificate_expiry_warnings",
            "Connecting certificates that expire within tls.expiry_warning (each certificate counted once).",
            Metrics::get(&m.expiry_warnings),
        )?;
        self.certificates(&mut e)?;
        if let Some(cluster) = self.gauges.cluster {
            Self::gauge(
                &mut e,
                "cluster_up",
                "1 while the cluster's Redis is reachable.",
                u64::from(cluster.up),
            )?;
            Self::counter(
                &mut e,
                "cluster_notes_published",
                "Notes (frames, joins, departures) published to other nodes' inboxes.",
                cluster.published,
            )?;
            Self::counter(
                &mut e,
                "cluster_notes_lost",
                "Notes for other nodes that could not be published (Redis unreachable, outbox full).",
                cluster.lost,
            )?;
            Self::counter(
                &mut e,
                "cluster_packets_missed",
                "Packets from other nodes that never arrived: numbers skipped in their sequence.",
                cluster.missed,
            )?;
            Self::counter(
                &mut e,
                "cluster_packets_stale",
                "Packets from other nodes dropped for coming after a later one (already counted missed), or again.",
                cluster.stale,
            )?;
            Self::counter(
                &mut e,
                "cluster_loss_notices",
                "CONN:ERROR 503s telling members that frames were lost between nodes (theirs, or their peers').",
                cluster.notices,
            )?;
            Self::counter(
                &mut e,
                "cluster_inbox_silences",
                "Times this node's inbox stopped delivering its own heartbeat and was subscribed again.",
                cluster.silences,
            )?;
        }
        Self::gauge(&mut e, "rooms", "Rooms with at least one member.", self.gauges.rooms.rooms)?;
        Self::gauge(&mut e, "members", "Members of all rooms.", self.gauges.rooms.members)?;
        Self::counter(
            &mut e,
            "joins",
            "Peers that sent their HELLO and joined a room.",
            Metrics::get(&m.joins),
        )?;
        Self::labelled(
            &mut e,
            "frames",
            "Data frames received from members (in) and queued to receivers (out, one per receiver).",
            &self.traffic(Flow::frames),
        )?;
        Self::labelled(
            &mut e,
            "bytes",
            "Bytes of the data frames counted by ws_proxy_frames_total.",
            &self.traffic(Flow::bytes),
        )?;
        Self::labelled(
            &mut e,
            "conn_errors",
            "CONN:ERROR messages sent by the proxy, by statusCode.",
            &Self::by("status", m.conn_errors.entries()),
        )?;
        Self::counter(
            &mut e,
            "replies",
            "Messages the proxy answered itself (CONN:ERROR, REST:RESPONSE 503).",
            Metrics::get(&m.errors_sent),
        )?;
        Self::counter(
            &mut e,
            "slow_consumer_disconnects",
            "Receivers closed with 1013 for not reading.",
            Metrics::get(&m.slow_consumers),
        )?;
        Self::gauge(
            &mut e,
            "held_messages",
            "Messages in hold buffers now.",
            self.gauges.rooms.held_messages,
        )?;
        Self::gauge(&mut e, "held_bytes", "Bytes in hold buffers now.", self.gauges.rooms.held_bytes)?;
        Self::counter(
            &mut e,
            "held",
            "Messages held for a member alone in its room.",
            Metrics::get(&m.held),
        )?;
        Self::counter(
            &mut e,
            "held_refused",
            "Messages the hold buffer refused or that expired (their sender got a 503).",
            Metrics::get(&m.held_refused),
        )?;
        Self::counter(
            &mut e,
            "held_discarded",
            "Held messages discarded because their sender left first.",
            Metrics::get(&m.held_discarded),
        )?;
        let latency = &m.relay_latency;
        let help = format!(
            "Time from a frame's arrival to its being queued to every receiver (or held or refused); sampled: one frame in {LATENCY_SAMPLE_EVERY} per connection."
        );
        e.encode_descriptor("relay_latency_seconds", &help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(
                Duration::from_nanos(latency.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
                latency.count(),
                &latency.buckets(),
                None,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{
        CertificateExpiry, ClusterTotals, ExpiryTotals, FrameTally, PeerStats, RoomTotals, TrustExpiry,
    };
    use tokio_tungstenite::tungstenite::Message;

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let metrics = Arc::new(Metrics::default());
        metrics.handshake_failed("unknown_ca");
        metrics.conn_error_sent(400);
        let mut tally = FrameTally::default();
        tally.relayed(&Message::text("hello"), 2);
        tally.publish(&metrics, &PeerStats::default());
        metrics.relay_latency.observe(Duration::from_micros(30));
        let mut expiry = ExpiryTotals::default();
        expiry.add(86_400 * 10);
        expiry.add(86_400 * 400);
        let trust = TrustExpiry {
            server: Some(CertificateExpiry {
                subject: "CN=proxy".into(),
                serial: "01".into(),
                not_after: 1_000 + 86_400,
            }),
            cas: vec![
                CertificateExpiry {
                    subject: "CN=root".into(),
                    serial: "0a:0b".into(),
                    not_after: 1_000 + 3 * 86_400,
                },
                // Its successor during a rotation: the same subject, another serial.
                CertificateExpiry {
                    subject: "CN=root".into(),
                    serial: "0c".into(),
                    not_after: 1_000 + 9 * 86_400,
                },
            ],
        };
        let rooms = RoomTotals { rooms: 1, members: 2, held_messages: 0, held_bytes: 0, expiry };
        let text = metrics.render(Gauges { rooms, cluster: None, trust: Arc::new(trust), now: 1_000 });
        for line in [
            "ws_proxy_build_info{version=\"",
            "ws_proxy_connections_total{outcome=\"tls_failed\"} 1",
            "ws_proxy_connections_total{outcome=\"refused\"} 0",
            "ws_proxy_tls_handshake_failures_total{reason=\"unknown_ca\"} 1",
            "ws_proxy_conn_errors_total{status=\"400\"} 1",
            "ws_proxy_frames_total{direction=\"out\",type=\"text\"} 2",
            "ws_proxy_bytes_total{direction=\"out\",type=\"text\"} 10",
            "ws_proxy_frames_total{direction=\"in\",type=\"binary\"} 0",
            "ws_proxy_rooms 1",
            "ws_proxy_members 2",
            "ws_proxy_relay_latency_seconds_bucket{le=\"5e-05\"} 1",
            "ws_proxy_relay_latency_seconds_bucket{le=\"2.5e-05\"} 0",
            "ws_proxy_relay_latency_seconds_bucket{le=\"+Inf\"} 1",
            "ws_proxy_relay_latency_seconds_count 1",
            "# HELP ws_proxy_relay_latency_seconds Time from",
            "ws_proxy_peer_certificate_expiry_seconds_bucket{le=\"604800\"} 0",
            "ws_proxy_peer_certificate_expiry_seconds_bucket{le=\"1.2096e+06\"} 1",
            "ws_proxy_peer_certificate_expiry_seconds_bucket{le=\"3.1536e+07\"} 1",
            "ws_proxy_peer_certificate_expiry_seconds_bucket{le=\"+Inf\"} 2",
            "ws_proxy_peer_certificate_expiry_seconds_count 2",
            "ws_proxy_peer_certificate_soonest_expiry_seconds 864000",
            "ws_proxy_server_certificate_expiry_seconds 86400",
            "ws_proxy_ca_certificate_expiry_seconds{subject=\"CN=root\",serial=\"0a:0b\"} 259200",
            "ws_proxy_ca_certificate_expiry_seconds{subject=\"CN=root\",serial=\"0c\"} 777600",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_known_label_value_is_shown_at_zero_on_a_fresh_node() {
        use crate::metrics::labels::{
            AuthHookResults, ConnErrorStatuses, HandshakeFailures, IdentityConflicts, LabelSet, Outcomes,
            UpgradeStatuses,
        };
        let gauges = Gauges { rooms: RoomTotals::default(), cluster: None, trust: Arc::default(), now: 0 };
        let text = Arc::new(Metrics::default()).render(gauges);
        assert!(text.contains("ws_proxy_peer_certificate_expiry_seconds_count 0"), "{text}");
        assert!(!text.contains("soonest"), "no member, no soonest expiry: {text}");
        let mut expected = Vec::new();
        let mut each = |name: &str, label: &str, values: Vec<String>| {
            expected
                .extend(values.into_iter().map(|v| format!("ws_proxy_{name}_total{{{label}=\"{v}\"}} 0")));
        };
        let text_of = |known: &[&str]| known.iter().map(ToString::to_string).collect::<Vec<_>>();
        let number_of = |known: &[u16]| known.iter().map(ToString::to_string).collect::<Vec<_>>();
        each("tls_handshake_failures", "reason", text_of(HandshakeFailures::KNOWN));
        each("upgrade_refusals", "status", number_of(UpgradeStatuses::KNOWN));
        each("conn_errors", "status", number_of(ConnErrorStatuses::KNOWN));
        each("connections", "outcome", text_of(Outcomes::KNOWN));
        each("auth_hook_checks", "result", text_of(AuthHookResults::KNOWN));
        each("identity_conflicts", "outcome", text_of(IdentityConflicts::KNOWN));
        for line in expected {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_metric_the_dashboard_and_the_alerts_use_is_exposed() {
        let mut expiry = ExpiryTotals::default();
        expiry.add(86_400);
        let trust = TrustExpiry {
            server: Some(CertificateExpiry {
                subject: "CN=proxy".into(),
                serial: "01".into(),
                not_after: 86_400,
            }),
            cas: vec![CertificateExpiry {
                subject: "CN=root".into(),
                serial: "0a:0b".into(),
                not_after: 86_400,
            }],
        };
        let rooms = RoomTotals { rooms: 1, members: 1, held_messages: 0, held_bytes: 0, expiry };
        let cluster = Some(ClusterTotals { up: true, ..ClusterTotals::default() });
        let text =
            Arc::new(Metrics::default()).render(Gauges { rooms, cluster, trust: Arc::new(trust), now: 0 });
        let exposed: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        for (file, content) in [
            ("ws-proxy-alerts.yml", include_str!("../../../../docs/monitoring/ws-proxy-alerts.yml")),
            (
                "ws-proxy-alerts.test.yml",
                include_str!("../../../../docs/monitoring/ws-proxy-alerts.test.yml"),
            ),
            ("ws-proxy-dashboard.json", include_str!("../../../../docs/monitoring/ws-proxy-dashboard.json")),
        ] {
            let mut rest = content;
            while let Some(at) = rest.find("ws_proxy_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                assert!(
                    exposed.contains(&name.as_str()),
                    "{file} uses {name}, which /metrics does not expose"
                );
            }
        }
    }
}
