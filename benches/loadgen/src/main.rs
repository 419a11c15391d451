//! `stompline-loadgen`: publishers and subscribers over WebSocket or TCP
//! against any STOMP 1.2 server, measuring deliveries/s, end-to-end latency,
//! loss/duplicates/reordering, idle-session memory, stompline's durable chat
//! pipeline, and both sides' CPU.
//! See `benches/README.md`.

mod chat;
mod conn;
mod fanout;
mod http;
mod idle;
mod pairs;
mod report;
mod run;
mod track;
mod usage;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::conn::{Credentials, Target};
use crate::run::Endpoint;

#[derive(Parser)]
#[command(name = "stompline-loadgen", version, about)]
struct Cli {
    /// `ws://IP:PORT/PATH` (STOMP over WebSocket) or `tcp://IP:PORT`.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// CONNECT `login`.
    #[arg(long, global = true, default_value = "guest")]
    login: String,
    /// CONNECT `passcode` (a password, or an access token where the server takes one).
    #[arg(long, global = true, default_value = "guest", env = "LOADGEN_PASSCODE")]
    passcode: String,
    /// CONNECT `host` (RabbitMQ: the virtual host).
    #[arg(long, global = true, default_value = "/")]
    vhost: String,
    /// The server's process id: its CPU (and RSS for `idle`) is read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Name for this run in reports (e.g. the server).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// Append the report as one JSON line to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Source addresses to bind before connecting, used round-robin
    /// (comma-separated). Each loopback address has its own ~28k ephemeral ports.
    #[arg(long, global = true, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// Shorthand for `--source 127.0.0.1,...,127.0.0.N`.
    #[arg(long, global = true)]
    source_count: Option<u8>,
    /// Connection handshakes in progress at once.
    #[arg(long, global = true, default_value_t = 64)]
    parallel: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One publisher to N subscribers on one topic, max rate with an in-flight window.
    Fanout(fanout::FanoutArgs),
    /// N one-to-one pairs on distinct destinations at a fixed rate each.
    Pairs(pairs::PairsArgs),
    /// Highest per-pair rate whose p99 stays under a bound.
    PairsSearch(pairs::SearchArgs),
    /// N idle sessions, each subscribed to its own destination; server RSS per session.
    Idle(idle::IdleArgs),
    /// stompline's chat pipeline: durable sends with RECEIPTs to one or many
    /// conversations, delivery latency and per-conversation order.
    Chat(chat::ChatArgs),
}

/// What the scenarios share.
pub struct Settings {
    endpoint: Endpoint,
    server_pid: Option<u32>,
    label: String,
    parallel: usize,
}

/// A short id that keeps destinations of different runs apart.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        format!("{:x}{:x}", std::process::id(), t % 0x1_0000_0000)
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Every session is a socket; thousands of idle ones need more than the
    // usual soft limit of 1024.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raise open-file limit")?;
    let mut sources = cli.source.clone();
    if let Some(n) = cli.source_count {
        sources.extend((1..=n).map(|i| IpAddr::from([127, 0, 0, i])));
    }
    let settings = Settings {
        endpoint: Endpoint {
            target: Target::parse(&cli.url)?,
            creds: Credentials {
                login: cli.login.clone(),
                passcode: cli.passcode.clone(),
                host: cli.vhost.clone(),
                heartbeat_ms: match &cli.scenario {
                    Scenario::Idle(a) => a.heartbeat_ms,
                    _ => 0,
                },
            },
            sources,
        },
        server_pid: cli.server_pid,
        label: cli.label.clone(),
        parallel: cli.parallel,
    };
    if let Scenario::Idle(a) = &cli.scenario {
        if a.sessions as u64 + 64 > nofile {
            eprintln!(
                "warning: {} sessions but the open-file limit is {nofile}; connections past it will fail",
                a.sessions
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Fanout(a) => fanout::run(&settings, a).await,
            Scenario::Pairs(a) => pairs::run(&settings, a).await,
            Scenario::PairsSearch(a) => pairs::search(&settings, a).await,
            Scenario::Idle(a) => idle::run(&settings, a).await,
            Scenario::Chat(a) => chat::run(&settings, a).await,
        }
    })?;
    report.print();
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &cli.json {
        report.append_json(path)?;
    }
    // Idle sessions and aborted tasks need not be shut down one by one.
    runtime.shutdown_background();
    Ok(())
}
