//! Group admission for [`super::SharedLimiter`]: admissions and token settlements that
//! queue while one round to Redis is out go together in the next, one script call per
//! key for each kind. A script call costs Redis more to start (~14 µs of Lua set-up
//! measured under the tenancy benchmark) than its dozen commands cost to run, and every
//! request made two of them. Within a call, Redis runs the requests one after another,
//! so limits stay exact; a lone request goes at once, as before.

use super::scripts::{ADMIT, SETTLE};
use super::{background, REDIS_TIMEOUT};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Operations one round takes at most (the rest wait for the next round).
const MAX_ROUND: usize = 256;

/// One admission's arguments, as [`ADMIT`] takes them per request.
pub(super) struct AdmitArgs {
    pub rpm: u32,
    pub tpm: u32,
    pub max_concurrent: u32,
    pub reserve: u64,
    pub id: String,
}

/// One admission's answer: verdict (0 ok, 1 rpm, 2 tpm, 3 concurrency), requests and
/// tokens in the window (counting this one when admitted), the oldest request's and
/// token entry's time, and Redis' clock, all in ms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Verdict {
    pub verdict: i64,
    pub requests: u64,
    pub tokens: u64,
    pub oldest_request: i64,
    pub oldest_tokens: i64,
    pub now: i64,
}

enum Op {
    Admit {
        keys: [String; 5],
        args: AdmitArgs,
        reply: oneshot::Sender<Result<Verdict, String>>,
    },
    Settle {
        /// The key's tokens hash and tokens sum.
        keys: [String; 2],
        id: String,
        actual: u64,
    },
}

/// The queue to this replica's batcher task; the task ends when this is dropped.
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Op>,
}

impl Batcher {
    pub(super) fn start(conn: ConnectionManager, lease_ms: u64) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        parlance_core::task::spawn("redis admission", run(conn, lease_ms, rx));
        Batcher { tx }
    }

    /// Admits one request under `keys` (the key's five Redis names); `Err` when Redis
    /// cannot answer within [`REDIS_TIMEOUT`].
    pub(super) async fn admit(
        &self,
        keys: [String; 5],
        args: AdmitArgs,
    ) -> Result<Verdict, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Op::Admit { keys, args, reply })
            .map_err(|_| "the admission task stopped".to_string())?;
        match tokio::time::timeout(REDIS_TIMEOUT, answer).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => Err("the admission task stopped".into()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Counts a reservation's actual tokens, without waiting (callable from `Drop`).
    pub(super) fn settle(&self, keys: [String; 2], id: String, actual: u64) {
        // A closed queue means shutdown: the reservation lapses with the window.
        self.tx.send(Op::Settle { keys, id, actual }).ok();
    }
}

async fn run(conn: ConnectionManager, lease_ms: u64, mut rx: mpsc::UnboundedReceiver<Op>) {
    let (admit, settle) = (redis::Script::new(ADMIT), redis::Script::new(SETTLE));
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let Round { admits, settles } = Round::of(ops);
        // Settlements first: one connection keeps the order, so admissions in the same
        // round see the tokens they gave back.
        let settling = settles.into_iter().map(|(keys, pairs)| {
            let mut conn = conn.clone();
            let mut inv = settle.prepare_invoke();
            inv.key(&keys[0]).key(&keys[1]);
            for (id, actual) in &pairs {
                inv.arg(id).arg(*actual);
            }
            async move { background("token settlement", inv.invoke_async::<i64>(&mut conn)).await }
        });
        let admitting = admits.into_iter().map(|(keys, group)| {
            let mut conn = conn.clone();
            let mut inv = admit.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(lease_ms);
            for (a, _) in &group {
                inv.arg(a.rpm)
                    .arg(a.tpm)
                    .arg(a.max_concurrent)
                    .arg(a.reserve)
                    .arg(&a.id);
            }
            async move {
                let answer =
                    tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<Vec<i64>>(&mut conn))
                        .await;
                answer_all(group, answer);
            }
        });
        futures::future::join(
            futures::future::join_all(settling),
            futures::future::join_all(admitting),
        )
        .await;
    }
}

type Waiter = (AdmitArgs, oneshot::Sender<Result<Verdict, String>>);
/// A settlement: reservation id and actual tokens.
type Settled = (String, u64);

/// One round's operations grouped by key, each group in arrival order.
struct Round {
    admits: Vec<([String; 5], Vec<Waiter>)>,
    settles: Vec<([String; 2], Vec<Settled>)>,
}

impl Round {
    fn of(ops: Vec<Op>) -> Round {
        let mut round = Round {
            admits: Vec::new(),
            settles: Vec::new(),
        };
        let (mut admit_at, mut settle_at) = (HashMap::new(), HashMap::new());
        for op in ops {
            match op {
                Op::Admit { keys, args, reply } => {
                    let i = *admit_at.entry(keys[0].clone()).or_insert_with(|| {
                        round.admits.push((keys, Vec::new()));
                        round.admits.len() - 1
                    });
                    if let Some((_, group)) = round.admits.get_mut(i) {
                        group.push((args, reply));
                    }
                }
                Op::Settle { keys, id, actual } => {
                    let i = *settle_at.entry(keys[0].clone()).or_insert_with(|| {
                        round.settles.push((keys, Vec::new()));
                        round.settles.len() - 1
                    });
                    if let Some((_, pairs)) = round.settles.get_mut(i) {
                        pairs.push((id, actual));
                    }
                }
            }
        }
        round
    }
}

/// Hands each waiter of a group its verdict from [`ADMIT`]'s answer: three numbers per
/// request, then the window's oldest entries and the clock.
fn answer_all(
    group: Vec<Waiter>,
    answer: Result<redis::RedisResult<Vec<i64>>, tokio::time::error::Elapsed>,
) {
    let values = match answer {
        Ok(Ok(v)) if v.len() == group.len() * 3 + 3 => v,
        Ok(Ok(_)) => return fail(group, "bad answer"),
        Ok(Err(e)) => return fail(group, &e.to_string()),
        Err(_) => return fail(group, "timed out"),
    };
    let tail = values.len() - 3;
    let (oldest_request, oldest_tokens, now) = match values.get(tail..) {
        Some(&[r, t, n]) => (r, t, n),
        _ => return fail(group, "bad answer"),
    };
    for ((_, reply), v) in group.into_iter().zip(values.chunks_exact(3)) {
        if let &[verdict, requests, tokens] = v {
            reply
                .send(Ok(Verdict {
                    verdict,
                    requests: requests.max(0) as u64,
                    tokens: tokens.max(0) as u64,
                    oldest_request,
                    oldest_tokens,
                    now,
                }))
                .ok();
        }
    }
}

fn fail(group: Vec<Waiter>, why: &str) {
    for (_, reply) in group {
        reply.send(Err(why.to_string())).ok();
    }
}
