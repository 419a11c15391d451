//! The persister's store write: one batch of chat sends stored in one
//! transaction (idempotency lookups, gapless seqs, outbox rows, the senders'
//! read marks, search indexing), as `Store::persist_messages` does it for
//! the pipeline.
//!
//! `cargo bench --bench persist` (SQLite in a temporary directory, with the
//! same durability settings as the server: WAL, `synchronous=FULL`, so
//! every batch pays one fsync). With `STOMPLINE_BENCH_POSTGRES_URL` set
//! (e.g. `postgres://postgres@127.0.0.1:5432/postgres`) the same runs on a
//! scratch PostgreSQL database, dropped afterwards.
//!
//! Shapes, as in the load generator's chat scenarios: one group of 20
//! members with every member sending, and 1,000 direct conversations among
//! 50 users; 100-byte bodies of words; batches of 16 and 160 sends (the
//! pipeline's batches under light and heavy load). Throughput is messages
//! stored per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stompline::store::{self, ConversationKind, NewConversation, NewMessage, NewUser, Role, Store};

/// Deterministic choices: a multiplicative hash of a running counter.
fn pick(counter: u64, salt: u64, n: usize) -> usize {
    (counter
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(salt)
        >> 17) as usize
        % n
}

/// About `n` bytes of words, chosen by `counter`.
fn text(counter: u64, n: usize) -> String {
    const WORDS: &[&str] = &[
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
        "eiusmod",
        "tempor",
        "incididunt",
        "labore",
        "magna",
        "aliqua",
    ];
    let mut s = String::with_capacity(n + 12);
    let mut salt = 0;
    while s.len() < n {
        s.push_str(WORDS[pick(counter, salt, WORDS.len())]);
        s.push(' ');
        salt += 1;
    }
    s.truncate(n);
    s
}

/// Who sends where.
struct Shape {
    /// (conversation id, its members)
    conversations: Vec<(String, Vec<String>)>,
}

async fn users(store: &dyn Store, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = store::new_id();
        store
            .create_user(NewUser {
                id: id.clone(),
                username: format!("user{i}"),
                display_name: format!("User {i}"),
                email: None,
                phone: None,
                password_hash: None,
                created_at: store::now(),
            })
            .await
            .expect("create user");
        ids.push(id);
    }
    ids
}

async fn conversation(store: &dyn Store, members: &[String], kind: ConversationKind) -> String {
    let id = store::new_id();
    let direct_key = (kind == ConversationKind::Direct).then(|| {
        let mut pair = [members[0].clone(), members[1].clone()];
        pair.sort();
        pair.join(":")
    });
    store
        .create_conversation(
            NewConversation {
                id: id.clone(),
                kind,
                name: (kind == ConversationKind::Group).then(|| "bench".to_string()),
                created_by: members[0].clone(),
                created_at: store::now(),
                direct_key,
                members: members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.clone(), if i == 0 { Role::Owner } else { Role::Member }))
                    .collect(),
            },
            Vec::new(),
        )
        .await
        .expect("create conversation");
    id
}

async fn one_group(store: &dyn Store) -> Shape {
    let members = users(store, 20).await;
    let cid = conversation(store, &members, ConversationKind::Group).await;
    Shape {
        conversations: vec![(cid, members)],
    }
}

async fn many_direct(store: &dyn Store) -> Shape {
    let people = users(store, 50).await;
    let mut conversations = Vec::new();
    'pairs: for i in 0..people.len() {
        for j in i + 1..people.len() {
            if conversations.len() == 1000 {
                break 'pairs;
            }
            let pair = vec![people[i].clone(), people[j].clone()];
            let cid = conversation(store, &pair, ConversationKind::Direct).await;
            conversations.push((cid, pair));
        }
    }
    Shape { conversations }
}

fn batch(shape: &Shape, counter: &mut u64, size: usize) -> Vec<NewMessage> {
    (0..size)
        .map(|_| {
            *counter += 1;
            let (cid, members) = &shape.conversations[pick(*counter, 1, shape.conversations.len())];
            let sender = &members[pick(*counter, 2, members.len())];
            NewMessage {
                id: store::new_id(),
                conversation_id: cid.clone(),
                sender_id: sender.clone(),
                client_msg_id: Some(format!("c{counter}")),
                body: text(*counter, 100),
                created_at: store::now(),
            }
        })
        .collect()
}

#[path = "../tests/support/pg.rs"]
mod pg;

/// A store to measure, and what to do with it afterwards.
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    pg: Option<pg::PgDatabase>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::open("", dir.path(), 4).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    Backend {
        name: "sqlite",
        store,
        _dir: Some(dir),
        pg: None,
    }
}

async fn postgres(admin_url: &str) -> Backend {
    let db = pg::PgDatabase::create_on(admin_url)
        .await
        .expect("PostgreSQL at STOMPLINE_BENCH_POSTGRES_URL");
    let store = store::open(&db.url, std::path::Path::new("."), 8)
        .await
        .expect("open postgres");
    store.migrate().await.expect("migrate");
    Backend {
        name: "postgres",
        store,
        _dir: None,
        pg: Some(db),
    }
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, make: &dyn Fn() -> Backend) {
    for (shape_name, many) in [("one_group", false), ("1000_direct", true)] {
        let backend = make();
        let shape = rt.block_on(async {
            if many {
                many_direct(&*backend.store).await
            } else {
                one_group(&*backend.store).await
            }
        });
        let mut group = c.benchmark_group(format!("persist/{}/{shape_name}", backend.name));
        group.measurement_time(Duration::from_secs(8));
        group.sample_size(20);
        let mut counter = 0u64;
        for size in [16usize, 160] {
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let msgs = batch(&shape, &mut counter, size);
                        let started = Instant::now();
                        let out = rt
                            .block_on(backend.store.persist_messages(msgs))
                            .expect("persist");
                        total += started.elapsed();
                        assert_eq!(out.len(), size);
                    }
                    total
                })
            });
        }
        group.finish();
        if let Some(db) = backend.pg {
            drop(backend.store);
            rt.block_on(db.drop_database());
        }
    }
}

fn persist(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bench_backend(c, &rt, &|| rt.block_on(sqlite()));
    if let Ok(url) = std::env::var("STOMPLINE_BENCH_POSTGRES_URL") {
        bench_backend(c, &rt, &|| rt.block_on(postgres(&url)));
    }
}

criterion_group!(benches, persist);
criterion_main!(benches);
