//! Many authenticated sessions, each subscribed to its own destination and
//! then silent: what one costs the server in resident memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::watch;

use crate::report::{note_error, Report};
use crate::run::connect_many;
use crate::usage::{rss_kib, CpuSample};
use crate::Settings;

/// `idle` options.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Sessions to open.
    #[arg(long, default_value_t = 5000)]
    pub sessions: usize,
    /// Seconds to wait after the last session subscribed before reading RSS.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Seconds to keep the sessions open after the reading.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Heart-beat interval offered both ways and kept by every session, ms
    /// (0 = none). Browser clients (stompjs) default to 10 s; without
    /// traffic some servers close idle WebSocket sessions (RabbitMQ
    /// Web-STOMP after 60 s).
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u64,
}

/// Runs the scenario.
pub async fn run(s: &Settings, a: &IdleArgs) -> Result<Report> {
    let prefix = format!("/topic/bench.idle.{}", crate::run_id());
    let rss_before = s.server_pid.and_then(rss_kib);
    let cpu0 = CpuSample::take(s.server_pid);
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let closed = Arc::new(AtomicU64::new(0));
    // Send at half the offered interval: a busy server checks late beats
    // strictly.
    let beat = Duration::from_millis((a.heartbeat_ms / 2).max(1));
    let beating = a.heartbeat_ms > 0;
    let closed_in = closed.clone();
    // Each session starts its holder (heart-beats, close detection) as soon
    // as it is subscribed: connecting thousands can take longer than a
    // server lets a silent session live (RabbitMQ Web-STOMP: 60 s).
    let conns = connect_many(&s.endpoint, a.sessions, s.parallel, move |i, mut conn| {
        let dest = format!("{prefix}.{i}");
        let mut stop = stop_rx.clone();
        let closed = closed_in.clone();
        async move {
            conn.subscribe("0", &dest).await?;
            Ok(tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at((Instant::now() + beat).into(), beat);
                // Read (and drop) whatever comes so a close is noticed.
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = ticks.tick(), if beating => {
                            if conn.writer.send_heartbeat().await.is_err() {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        f = conn.reader.next_frame() => if !matches!(f, Ok(Some(_))) {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                drop(conn);
            }))
        }
    })
    .await;
    let connect_s = started.elapsed().as_secs_f64();
    let cpu1 = CpuSample::take(s.server_pid);

    let mut errors = Vec::new();
    let mut failed = 0u64;
    let mut holders = Vec::new();
    for c in conns {
        match c {
            Ok(holder) => holders.push(holder),
            Err(e) => {
                failed += 1;
                note_error(&mut errors, &format!("{e:#}"));
            }
        }
    }
    let connected = holders.len() as u64;
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let rss_after = s.server_pid.and_then(rss_kib);
    let cpu2 = CpuSample::take(s.server_pid);
    // Sessions the server closed before the reading do not count.
    let live = connected.saturating_sub(closed.load(Ordering::Relaxed));
    if a.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    }
    let closed_early = closed.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }

    let per_session = match (rss_before, rss_after) {
        (Some(b), Some(a)) if live > 0 => Some((a as f64 - b as f64) / live as f64),
        _ => None,
    };
    Ok(Report {
        scenario: "idle".into(),
        label: s.label.clone(),
        target: s.endpoint.target.url.clone(),
        params: json!({ "sessions": a.sessions, "settle_s": a.settle, "parallel": s.parallel,
                        "heartbeat_ms": a.heartbeat_ms,
                        "source_addresses": s.endpoint.sources.len().max(1) }),
        measured_s: connect_s,
        deliveries_per_s: None,
        published_per_s: None,
        latency_ms: None,
        deliveries: None,
        max_send_lag_ms: None,
        stalled: false,
        cpu: cpu0.until(&cpu1),
        extra: json!({
            "connected": connected,
            "failed": failed,
            "errors": errors,
            "live_at_reading": live,
            "closed_by_server": closed_early,
            "connect_s": connect_s,
            "sessions_per_s": connected as f64 / connect_s.max(1e-9),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_per_session_kib": per_session,
            "idle_cpu": cpu1.until(&cpu2),
        }),
    })
}
