//! Wiring: storage, accounts, broker, the HTTP/WebSocket listener and the
//! STOMP TCP listener, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::api::{self, ApiState};
use crate::auth::limiter::{Limiter, MemoryLimiter, RedisLimiter};
use crate::auth::{Auth, AuthSettings, OtpSettings, RateLimits};
use crate::broker::{Broker, Registry};
use crate::bus;
use crate::chat::{events, Chat, Gateway};
use crate::config::{Config, SharedStateKind};
use crate::mail::{Courier, Retry, Senders};
use crate::pipeline::{run_persister, Dispatcher};
use crate::presence::Presence;
use crate::relay;
use crate::shared_state;
use crate::stomp::Shared;
use crate::store::{self, Store};
use crate::transport::{tcp, ws};

/// A started server.
pub struct Running {
    /// Bound HTTP + WebSocket address.
    pub http_addr: SocketAddr,
    /// Bound STOMP TCP address, when enabled.
    pub stomp_addr: Option<SocketAddr>,
    /// What sessions share (for tests and embedding).
    pub shared: Arc<Shared>,
    drained: tokio::sync::oneshot::Receiver<()>,
}

impl Running {
    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits until the server has drained (or the drain timeout passed).
    pub async fn wait(&mut self) {
        let _ = (&mut self.drained).await;
    }
}

/// Opens the configured store and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = store::open(
        &config.database_url,
        &config.data_dir,
        config.database.pool_size,
    )
    .await
    .context("opening the database")?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// Starts every listener and returns once they are bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let store = open_store(&config).await?;
    let shutdown = CancellationToken::new();
    let senders = Senders::from_config(&config).context("setting up mail delivery")?;
    let courier = Courier::start(senders, Retry::from_config(&config.mail), shutdown.clone());
    let limiter: Arc<dyn Limiter> = match config.shared_state {
        SharedStateKind::Memory => Arc::new(MemoryLimiter::new()),
        SharedStateKind::Redis => Arc::new(
            RedisLimiter::new(&config.redis.url, &config.redis.key_prefix)
                .context("setting up the Redis rate limiter")?,
        ),
    };
    let limits = RateLimits::new(limiter, config.rate_limit.clone());
    let auth = Arc::new(
        Auth::new(
            AuthSettings {
                jwt_secret: Some(config.auth.jwt_secret.clone()).filter(|s| !s.is_empty()),
                data_dir: config.data_dir.clone(),
                access_ttl: config.auth.access_token_ttl(),
                refresh_ttl: config.auth.refresh_token_ttl(),
                argon2_memory_kib: config.auth.argon2_memory_kib,
                argon2_iterations: config.auth.argon2_iterations,
                argon2_parallelism: config.auth.argon2_parallelism,
                otp: OtpSettings {
                    ttl: Duration::from_secs(config.auth.otp_ttl_secs),
                    max_attempts: config.auth.otp_max_attempts,
                    resend: Duration::from_secs(config.auth.otp_resend_secs),
                    per_hour: config.auth.otp_per_hour,
                    per_hour_per_ip: config.auth.otp_per_hour_per_ip,
                },
            },
            store.clone(),
        )
        .context("setting up authentication")?
        .with_rate_limits(limits)
        .with_courier(courier),
    );
    spawn_otp_sweeper(store.clone(), shutdown.clone());
    let metrics = crate::metrics::install();

    // The message path: the bus `config.bus` selects (in-process, or Kafka
    // with the domain-events topic) and the relay `config.relay` selects.
    let instance_id = uuid::Uuid::new_v4().simple().to_string();
    let (relay, relay_inbox) = relay::connect(&config, shutdown.clone())
        .await
        .context("connecting the relay")?;
    let (relay, relay_inbox) =
        relay::loop_back(relay, relay_inbox, events::instance_channel(&instance_id));
    let bus::Connected {
        bus,
        consumer,
        events,
    } = bus::connect(&config)
        .await
        .with_context(|| format!("opening the {:?} message bus", config.bus))?;
    // Read receipts and presence reach the events topic where they are
    // published; outbox changes through the pipeline.
    let relay: Arc<dyn relay::Relay> = match &events {
        Some(sink) => bus::events::EventTee::new(relay, sink.clone()),
        None => relay,
    };
    let broker = Arc::new(Broker::new(config.stomp.queue_hold_max));
    let gateway_tasks = Gateway::build(
        instance_id.clone(),
        store.clone(),
        relay.clone(),
        broker.clone(),
    );
    let gateway = gateway_tasks.gateway().clone();
    gateway_tasks.spawn(relay_inbox, shutdown.clone());
    gateway.watch(events::instance_channel(&instance_id)).await;
    let dispatcher = Dispatcher::new(store.clone(), relay.clone(), events.clone());
    let api_events = events.clone();
    tokio::spawn(dispatcher.clone().run(shutdown.clone()));
    let persister = tokio::spawn(run_persister(
        consumer,
        store.clone(),
        relay.clone(),
        events,
        shutdown.clone(),
    ));
    let state = shared_state::open(&config, &instance_id)
        .await
        .context("opening the shared state")?;
    state
        .share_revocations(&auth, shutdown.clone())
        .await
        .context("reading revoked sessions")?;
    let chat = Chat::new(
        store.clone(),
        bus,
        relay.clone(),
        gateway,
        dispatcher,
        config.chat.clone(),
        state.chat.clone(),
    );
    let presence = Presence::with_state(store.clone(), relay.clone(), state.presence.clone());
    tokio::spawn(presence.clone().run(
        Duration::from_millis(config.presence.refresh_ms.max(1)),
        shutdown.clone(),
    ));
    spawn_chat_timers(chat.clone(), &config.chat, shutdown.clone());

    let shared = Arc::new(Shared {
        config: config.clone(),
        auth: auth.clone(),
        broker,
        registry: Arc::new(Registry::default()),
        chat,
        presence,
        shutdown: shutdown.clone(),
    });

    // Logout and refresh-token reuse close the session's live connections.
    let mut revocations = auth.subscribe_revocations();
    let registry = shared.registry.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                sid = revocations.recv() => match sid {
                    Ok(sid) => {
                        registry.close_auth_session(&sid, "session revoked");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        }
    });

    let permits = Arc::new(Semaphore::new(config.stomp.max_connections));
    let tracker = TaskTracker::new();
    let router = api::router(ApiState {
        auth,
        store,
        metrics: Some(metrics),
        chat: shared.chat.clone(),
        presence: shared.presence.clone(),
        cookie_secure: config.auth.cookie_secure,
        events: api_events,
        shared_state: state.redis.clone(),
    })
    .merge(
        Router::new()
            .route("/ws", get(ws::handler))
            .with_state(ws::WsState {
                shared: shared.clone(),
                permits: permits.clone(),
                tracker: tracker.clone(),
            }),
    )
    .fallback_service(crate::web::service(&config.web_dir));
    let router = api::security::protect(router, &config.auth.allowed_origins);

    let http = TcpListener::bind(config.http_socket_addr())
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let http_addr = http.local_addr()?;
    let stomp = match config.stomp_socket_addr() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding STOMP on {}", config.stomp_addr))?,
        ),
        None => None,
    };
    let stomp_addr = stomp.as_ref().map(TcpListener::local_addr).transpose()?;
    tracing::info!(
        "listening http={} stomp={}",
        http_addr,
        stomp_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string())
    );

    tracing::info!("{}", crate::web::describe(&config.web_dir));

    let http_conns = TaskTracker::new();
    let http_task = tokio::spawn(accept_http(
        http,
        router,
        shutdown.clone(),
        http_conns.clone(),
    ));
    let stomp_task = stomp.map(|l| {
        tokio::spawn(accept_stomp(
            l,
            shared.clone(),
            permits,
            tracker.clone(),
            shutdown.clone(),
        ))
    });

    let (done, drained) = tokio::sync::oneshot::channel();
    let drain_timeout = config.drain_timeout();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        tracing::info!("shutting down");
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let _ = http_task.await;
        http_conns.close();
        let _ = tokio::time::timeout_at(deadline, http_conns.wait()).await;
        if let Some(t) = stomp_task {
            let _ = t.await;
        }
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout passed with connections still open");
        }
        // Sends already on the bus are stored before the process exits.
        if tokio::time::timeout_at(deadline, persister).await.is_err() {
            tracing::warn!("drain timeout passed with messages still being persisted");
        }
        let _ = done.send(());
    });

    Ok(Running {
        http_addr,
        stomp_addr,
        shared,
        drained,
    })
}

/// The next accepted connection, or `None` once shutdown began. Accept
/// errors (e.g. out of file descriptors) are logged and retried after a
/// short pause instead of ending the listener.
async fn next_connection(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn accept_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    conns: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024);
    loop {
        let Some(stream) = next_connection(&listener, &shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        // Handlers read the peer address (rate limits per IP) from here.
        let peer = stream.peer_addr().ok();
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(peer) = peer {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                req
            },
        ));
        let mut conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let result = tokio::select! {
                r = &mut conn => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close; upgraded
                    // WebSocket connections are tracked separately.
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

async fn accept_stomp(
    listener: TcpListener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let Some(stream) = next_connection(&listener, &shutdown).await else {
            break;
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    tcp::serve(stream, shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                metrics::counter!(crate::metrics::names::LIMITS_HIT, crate::metrics::labels::KIND => "connections").increment(1);
                tokio::spawn(tcp::refuse(stream));
            }
        }
    }
}

/// Deletes expired one-time codes every ten minutes.
fn spawn_otp_sweeper(store: Arc<dyn Store>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = store.delete_expired_otps(store::now()).await {
                        tracing::warn!(error = %e, "deleting expired one-time codes failed");
                    }
                }
            }
        }
    });
}

/// Periodic chat work: ending typing indicators nobody renewed, and the
/// retention sweep (a minute after start, then every interval).
fn spawn_chat_timers(
    chat: Arc<Chat>,
    config: &crate::config::ChatConfig,
    shutdown: CancellationToken,
) {
    let typing = chat.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => typing.expire_typing().await,
            }
        }
    });
    let Some(max_age) = config.retention() else {
        return;
    };
    let every = Duration::from_secs(config.retention_interval_secs.max(1));
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now() + Duration::from_secs(60).min(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            if let Err(e) = chat.apply_retention(max_age).await {
                tracing::warn!(error = %e, "retention sweep failed");
            }
            next = tokio::time::Instant::now() + every;
        }
    });
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs the server until SIGTERM/SIGINT, then drains and returns.
pub fn serve(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let mut running = start(config).await?;
        shutdown_signal().await;
        running.shutdown();
        running.wait().await;
        Ok(())
    })
}

/// Applies database migrations and exits.
pub fn migrate(config: &Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        open_store(config).await?;
        tracing::info!("migrations applied");
        Ok(())
    })
}
