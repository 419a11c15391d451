//! One publisher, many subscribers on one topic, publishing as fast as an
//! in-flight window allows.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::sync::watch;

use crate::report::{merge, Latency, Report};
use crate::run::{
    connect_many, drain, publish_windowed, spawn_subscriber, Credit, CreditMode, WindowedPublish,
    MAX_WINDOW,
};
use crate::track::{now_ns, Window, MIN_BODY};
use crate::usage::CpuSample;
use crate::Settings;

/// `fanout` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Body size in bytes (at least 43: the id and timestamp prefix).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Most messages in flight.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// When a message stops being in flight.
    #[arg(long, value_enum, default_value_t = CreditMode::All)]
    pub credit: CreditMode,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds published before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for the last deliveries after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Destination (default: a fresh `/topic/bench.fanout.<run>`).
    #[arg(long)]
    pub destination: Option<String>,
}

/// Runs the scenario.
pub async fn run(s: &Settings, a: &FanoutArgs) -> Result<Report> {
    if a.size < MIN_BODY {
        bail!("--size must be at least {MIN_BODY}");
    }
    if a.window == 0 || a.window > MAX_WINDOW {
        bail!("--window must be 1..={MAX_WINDOW}");
    }
    let destination = a
        .destination
        .clone()
        .unwrap_or_else(|| format!("/topic/bench.fanout.{}", crate::run_id()));
    let window = Window::new();
    let credit = Credit::new(a.subscribers as u32);
    let (stop_tx, stop_rx) = watch::channel(false);

    let dest = destination.clone();
    let conns = connect_many(&s.endpoint, a.subscribers, s.parallel, move |i, mut c| {
        let dest = dest.clone();
        async move {
            c.subscribe(&format!("s{i}"), &dest).await?;
            Ok(c)
        }
    })
    .await;
    let mut subscribers = Vec::with_capacity(conns.len());
    for (i, c) in conns.into_iter().enumerate() {
        let c = c.with_context(|| format!("subscriber {i}"))?;
        let sub_credit = (a.credit == CreditMode::All).then(|| credit.clone());
        subscribers.push(spawn_subscriber(
            c,
            window.clone(),
            sub_credit,
            stop_rx.clone(),
        ));
    }

    let mut conn = s
        .endpoint
        .connect(a.subscribers)
        .await
        .context("publisher")?;
    if a.credit == CreditMode::Echo {
        conn.subscribe("echo", &destination).await?;
    }
    let warmup = Duration::from_secs_f64(a.warmup);
    let measured = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let t0 = now_ns();
    window.set(
        t0 + warmup.as_nanos() as u64,
        t0 + (warmup + measured).as_nanos() as u64,
    );
    let until = start + warmup + measured;
    let publisher = tokio::spawn(publish_windowed(
        conn,
        WindowedPublish {
            id: 0,
            destination: destination.clone(),
            size: a.size,
            window: a.window,
            mode: a.credit,
            until,
            stall_timeout: Duration::from_secs(5),
        },
        credit.clone(),
    ));
    tokio::time::sleep_until((start + warmup).into()).await;
    let cpu0 = CpuSample::take(s.server_pid);
    tokio::time::sleep_until(until.into()).await;
    let cpu1 = CpuSample::take(s.server_pid);
    let published = publisher.await??;

    let sent = published.sent;
    let trackers = drain(
        subscribers,
        |_| sent,
        stop_tx,
        Duration::from_secs_f64(a.drain),
    )
    .await;
    let (mut deliveries, hist) = merge(&trackers, sent, |_| sent);
    if let Some(e) = &published.error {
        crate::report::note_error(&mut deliveries.errors, &format!("publisher: {e}"));
    }
    let secs = measured.as_secs_f64();
    Ok(Report {
        scenario: "fanout".into(),
        label: s.label.clone(),
        target: s.endpoint.target.url.clone(),
        params: json!({
            "subscribers": a.subscribers, "size": a.size, "window": a.window,
            "credit": a.credit, "duration_s": a.duration, "warmup_s": a.warmup,
            "destination": destination,
        }),
        measured_s: secs,
        deliveries_per_s: Some(deliveries.measured as f64 / secs),
        published_per_s: Some(sent as f64 / (warmup + measured).as_secs_f64()),
        latency_ms: Latency::of(&hist),
        deliveries: Some(deliveries),
        max_send_lag_ms: None,
        stalled: published.stalled,
        cpu: cpu0.until(&cpu1),
        extra: serde_json::Value::Null,
    })
}
