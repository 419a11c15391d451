//! Merging subscriber trackers into one result, printing it, and appending it
//! as a JSON line for scripts.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::track::{histogram, Tracker};
use crate::usage::CpuUse;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a microsecond histogram; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// Delivery totals over all subscribers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deliveries {
    /// Messages the publishers sent.
    pub sent: u64,
    /// Deliveries the subscribers should have received in total.
    pub expected: u64,
    /// Every MESSAGE received.
    pub received: u64,
    /// Deliveries of messages sent inside the measured window.
    pub measured: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received after a later message of the same publisher.
    pub reordered: u64,
    /// Bodies without our prefix.
    pub foreign: u64,
    /// Subscribers whose connection ended early.
    pub failed_subscribers: u64,
    /// First few distinct reasons connections ended early.
    pub errors: Vec<String>,
}

/// Merges trackers; `expected(i)` is what subscriber `i` should have got.
pub fn merge(
    trackers: &[Tracker],
    sent: u64,
    expected: impl Fn(usize) -> u64,
) -> (Deliveries, Histogram<u64>) {
    let mut h = histogram();
    let mut d = Deliveries {
        sent,
        ..Default::default()
    };
    for (i, t) in trackers.iter().enumerate() {
        h.add(&t.latency).expect("same histogram bounds");
        let e = expected(i);
        d.expected += e;
        d.received += t.received;
        d.measured += t.measured;
        d.lost += e.saturating_sub(t.unique);
        d.duplicates += t.duplicates;
        d.reordered += t.reordered;
        d.foreign += t.foreign;
        if let Some(err) = &t.error {
            d.failed_subscribers += 1;
            note_error(&mut d.errors, err);
        }
    }
    (d, h)
}

/// Keeps up to five distinct error texts.
pub fn note_error(errors: &mut Vec<String>, err: &str) {
    if errors.len() < 5 && !errors.iter().any(|e| e == err) {
        errors.push(err.to_owned());
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `fanout`, `pairs`, `pairs-search` or `idle`.
    pub scenario: String,
    /// Free text given with `--label` (e.g. the server's name).
    pub label: String,
    /// Target URL.
    pub target: String,
    /// Scenario parameters.
    pub params: serde_json::Value,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// Deliveries per second in the measured window (all subscribers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    /// Messages published per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_per_s: Option<f64>,
    /// End-to-end latency of measured deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    /// Delivery accounting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Deliveries>,
    /// Largest delay of a fixed-rate send behind schedule, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_send_lag_ms: Option<f64>,
    /// A windowed publisher gave up waiting for credit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stalled: bool,
    /// CPU of both sides over the measured window.
    pub cpu: CpuUse,
    /// Scenario-specific extras (idle memory, search steps).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

impl Report {
    /// Prints a short human summary on stderr.
    pub fn print(&self) {
        let mut line = format!("[{}] {} {}", self.label, self.scenario, self.target);
        if let Some(r) = self.deliveries_per_s {
            line += &format!(" | {r:.0} deliveries/s");
        }
        if let Some(r) = self.published_per_s {
            line += &format!(" ({r:.0} published/s)");
        }
        if let Some(l) = &self.latency_ms {
            line += &format!(
                " | latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                l.p50, l.p99, l.p999, l.max
            );
        }
        if let Some(d) = &self.deliveries {
            line += &format!(
                " | lost {} dup {} reorder {}",
                d.lost, d.duplicates, d.reordered
            );
            if d.failed_subscribers > 0 {
                line += &format!(
                    " | {} subscribers failed: {:?}",
                    d.failed_subscribers, d.errors
                );
            }
        }
        if let Some(lag) = self.max_send_lag_ms {
            line += &format!(" | max send lag {lag:.1} ms");
        }
        if self.stalled {
            line += " | STALLED";
        }
        line += &format!(" | cpu client {:.0}%", self.cpu.client_pct);
        if let Some(s) = self.cpu.server_pct {
            line += &format!(" server {s:.0}%");
        }
        if let Some(m) = self.cpu.machine_pct {
            line += &format!(" machine {m:.0}%");
        }
        if !self.extra.is_null() {
            line += &format!(" | {}", self.extra);
        }
        eprintln!("{line}");
    }

    /// Appends the report as one JSON line to `path`.
    pub fn append_json(&self, path: &Path) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(self)?)?;
        Ok(())
    }
}
