//! Many one-to-one pairs, each on its own destination, at a fixed rate; and a
//! search for the highest per-pair rate that keeps p99 under a bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::sync::watch;

use crate::report::{merge, note_error, Latency, Report};
use crate::run::{connect_many, drain, publish_rated, spawn_subscriber, RatedPublish};
use crate::track::{now_ns, Window, MIN_BODY};
use crate::usage::CpuSample;
use crate::Settings;

/// `pairs` options.
#[derive(Debug, Clone, clap::Args)]
pub struct PairsArgs {
    /// Publisher/subscriber pairs.
    #[arg(long, default_value_t = 200)]
    pub pairs: usize,
    /// Messages per second per pair.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Body size in bytes (at least 43).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Seconds published before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for the last deliveries after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

/// `pairs-search` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Pair count, body size, step length (`--duration`) and warm-up.
    #[command(flatten)]
    pub pairs: PairsArgs,
    /// The p99 bound in milliseconds a rate must stay under.
    #[arg(long, default_value_t = 10.0)]
    pub p99_ms: f64,
    /// Highest per-pair rate tried.
    #[arg(long, default_value_t = 20_000.0)]
    pub max_rate: f64,
    /// Bisection steps after the doubling (or halving) phase.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    /// Pause between steps so the server settles, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub pause: f64,
}

/// Runs `pairs` once at `a.rate`.
pub async fn run(s: &Settings, a: &PairsArgs) -> Result<Report> {
    if a.size < MIN_BODY {
        bail!("--size must be at least {MIN_BODY}");
    }
    let n = a.pairs;
    let prefix = format!("/topic/bench.pairs.{}", crate::run_id());
    let window = Window::new();
    let (stop_tx, stop_rx) = watch::channel(false);

    let p = prefix.clone();
    let subs = connect_many(&s.endpoint, n, s.parallel, move |i, mut c| {
        let dest = format!("{p}.{i}");
        async move {
            c.subscribe(&format!("s{i}"), &dest).await?;
            Ok(c)
        }
    })
    .await;
    let mut subscribers = Vec::with_capacity(n);
    for (i, c) in subs.into_iter().enumerate() {
        let c = c.with_context(|| format!("subscriber {i}"))?;
        subscribers.push(spawn_subscriber(c, window.clone(), None, stop_rx.clone()));
    }
    // Publishers take the connection indexes after the subscribers so both
    // spread over the source addresses.
    let endpoint = s.endpoint.clone();
    let pubs = {
        let mut v = Vec::with_capacity(n);
        for c in connect_many(&endpoint, n, s.parallel, |_, c| async move { Ok(c) }).await {
            v.push(c.context("publisher")?);
        }
        v
    };

    let warmup = Duration::from_secs_f64(a.warmup);
    let measured = Duration::from_secs_f64(a.duration);
    let lead = Duration::from_millis(200);
    let start = Instant::now() + lead;
    let until = start + warmup + measured;
    let t0 = now_ns() + lead.as_nanos() as u64;
    window.set(
        t0 + warmup.as_nanos() as u64,
        t0 + (warmup + measured).as_nanos() as u64,
    );
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::with_capacity(n);
    for (i, conn) in pubs.into_iter().enumerate() {
        // Spread the publishers' phases over one period instead of firing
        // them all on the same tick.
        let phase = period.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(publish_rated(
            conn,
            RatedPublish {
                id: i as u32,
                destination: format!("{prefix}.{i}"),
                size: a.size,
                rate: a.rate,
                start: start + phase,
                until,
            },
            counters[i].clone(),
        )));
    }
    tokio::time::sleep_until((start + warmup).into()).await;
    let cpu0 = CpuSample::take(s.server_pid);
    tokio::time::sleep_until(until.into()).await;
    let cpu1 = CpuSample::take(s.server_pid);

    let mut sent = vec![0u64; n];
    let mut max_lag = Duration::ZERO;
    let mut pub_errors = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let p = t.await??;
        sent[i] = p.sent;
        max_lag = max_lag.max(p.max_lag);
        if let Some(e) = p.error {
            note_error(&mut pub_errors, &format!("publisher: {e}"));
        }
    }
    for (i, c) in counters.iter().enumerate() {
        c.store(sent[i], Ordering::Release);
    }
    let total: u64 = sent.iter().sum();
    let trackers = drain(
        subscribers,
        |i| sent[i],
        stop_tx,
        Duration::from_secs_f64(a.drain),
    )
    .await;
    let (mut deliveries, hist) = merge(&trackers, total, |i| sent[i]);
    for e in pub_errors {
        note_error(&mut deliveries.errors, &e);
    }
    let secs = measured.as_secs_f64();
    Ok(Report {
        scenario: "pairs".into(),
        label: s.label.clone(),
        target: s.endpoint.target.url.clone(),
        params: json!({
            "pairs": n, "rate_per_pair": a.rate, "size": a.size,
            "duration_s": a.duration, "warmup_s": a.warmup,
        }),
        measured_s: secs,
        deliveries_per_s: Some(deliveries.measured as f64 / secs),
        published_per_s: Some(total as f64 / (warmup + measured).as_secs_f64()),
        latency_ms: Latency::of(&hist),
        deliveries: Some(deliveries),
        max_send_lag_ms: Some(max_lag.as_secs_f64() * 1000.0),
        stalled: false,
        cpu: cpu0.until(&cpu1),
        extra: serde_json::Value::Null,
    })
}

/// A step passes when p99 is under the bound, nothing was lost, no
/// subscriber failed, and the publishers held at least 95 % of the rate.
fn passes(r: &Report, rate: f64, pairs: usize, p99_ms: f64) -> bool {
    let Some(l) = r.latency_ms else { return false };
    let Some(d) = &r.deliveries else { return false };
    let held = r.published_per_s.unwrap_or(0.0) >= 0.95 * rate * pairs as f64;
    l.p99 < p99_ms && d.lost == 0 && d.failed_subscribers == 0 && held
}

fn step_json(rate: f64, r: &Report, ok: bool) -> serde_json::Value {
    json!({
        "rate_per_pair": rate, "pass": ok,
        "p50_ms": r.latency_ms.map(|l| l.p50), "p99_ms": r.latency_ms.map(|l| l.p99),
        "published_per_s": r.published_per_s, "deliveries_per_s": r.deliveries_per_s,
        "lost": r.deliveries.as_ref().map(|d| d.lost),
        "max_send_lag_ms": r.max_send_lag_ms,
        "client_cpu_pct": r.cpu.client_pct, "server_cpu_pct": r.cpu.server_pct,
        "machine_cpu_pct": r.cpu.machine_pct,
    })
}

/// Doubles (or halves) the per-pair rate from `--rate` to bracket the
/// highest passing rate, then bisects. A failing rate is tried a second time
/// before it counts as failed.
pub async fn search(s: &Settings, a: &SearchArgs) -> Result<Report> {
    let steps = std::cell::RefCell::new(Vec::new());
    let pause = Duration::from_secs_f64(a.pause);
    // A rate fails only when it fails twice in a row: on a shared machine one
    // step can be disturbed by other work (the step list shows both tries).
    let step = |rate: f64| {
        let mut args = a.pairs.clone();
        args.rate = rate;
        let steps = &steps;
        async move {
            let mut last = None;
            for _ in 0..2 {
                let r = run(s, &args).await?;
                let ok = passes(&r, rate, args.pairs, a.p99_ms);
                r.print();
                steps.borrow_mut().push(step_json(rate, &r, ok));
                tokio::time::sleep(pause).await;
                last = Some((r, ok));
                if ok {
                    break;
                }
            }
            anyhow::Ok(last.expect("at least one try"))
        }
    };
    let mut best: Option<Report> = None;

    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = a.pairs.rate;
    loop {
        let (r, ok) = step(rate).await?;
        if ok {
            lo = Some(rate);
            best = Some(r);
            if hi.is_some() || rate * 2.0 > a.max_rate {
                break;
            }
            rate *= 2.0;
        } else {
            hi = Some(rate);
            if lo.is_some() || rate / 2.0 < 1.0 {
                break;
            }
            rate /= 2.0;
        }
    }
    if let (Some(mut l), Some(mut h)) = (lo, hi) {
        for _ in 0..a.refine {
            let mid = ((l + h) / 2.0).round();
            if mid <= l || mid >= h {
                break;
            }
            let (r, ok) = step(mid).await?;
            if ok {
                l = mid;
                best = Some(r);
            } else {
                h = mid;
            }
        }
        lo = Some(l);
    }
    let mut report = best.unwrap_or_else(|| Report {
        scenario: String::new(),
        label: s.label.clone(),
        target: s.endpoint.target.url.clone(),
        params: serde_json::Value::Null,
        measured_s: 0.0,
        deliveries_per_s: None,
        published_per_s: None,
        latency_ms: None,
        deliveries: None,
        max_send_lag_ms: None,
        stalled: false,
        cpu: Default::default(),
        extra: serde_json::Value::Null,
    });
    report.scenario = "pairs-search".into();
    report.params = json!({
        "pairs": a.pairs.pairs, "size": a.pairs.size, "step_s": a.pairs.duration,
        "p99_bound_ms": a.p99_ms, "start_rate": a.pairs.rate,
    });
    report.extra = json!({ "max_rate_per_pair": lo, "steps": steps.into_inner() });
    Ok(report)
}
