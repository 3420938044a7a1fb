//! Group admission for [`super::SharedLimiter`]: admissions and token settlements that
//! queue while one round to Redis is out go together in the next, one script call per
//! key for each kind. A script call costs Redis more to start (~14 µs of Lua set-up
//! measured under the tenancy benchmark) than its dozen commands cost to run, and every
//! request made two of them. Within a call, Redis runs the requests one after another,
//! so limits stay exact; a lone request goes at once, as before.

use super::scripts::{ADMIT, SETTLE};
use super::{background, REDIS_TIMEOUT};
use redis::aio::ConnectionManager;
use std::sync::Arc;
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
        keys: Arc<[String; 5]>,
        args: AdmitArgs,
        reply: oneshot::Sender<Result<Verdict, String>>,
    },
    Settle {
        /// The key's tokens hash and tokens sum.
        keys: Arc<[String; 2]>,
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
        keys: Arc<[String; 5]>,
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
    pub(super) fn settle(&self, keys: Arc<[String; 2]>, id: String, actual: u64) {
        // A closed queue means shutdown: the reservation lapses with the window.
        self.tx.send(Op::Settle { keys, id, actual }).ok();
    }
}

async fn run(conn: ConnectionManager, lease_ms: u64, mut rx: mpsc::UnboundedReceiver<Op>) {
    let (admit, settle) = (redis::Script::new(ADMIT), redis::Script::new(SETTLE));
    // Loaded up front: a script's first call otherwise fails, loads it and runs again
    // after whatever was sent behind it, and a round's settlements must run before its
    // admissions. (After a Redis restart the first round may run out of order once,
    // which only counts tokens as still reserved a moment longer.)
    for script in [&admit, &settle] {
        let mut conn = conn.clone();
        let inv = script.prepare_invoke();
        if let Ok(Err(e)) = tokio::time::timeout(REDIS_TIMEOUT, inv.load_async(&mut conn)).await {
            tracing::debug!("Redis script load: {e}");
        }
    }
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
        let settling = settles.groups.into_iter().map(|(keys, pairs)| {
            let mut conn = conn.clone();
            let mut inv = settle.prepare_invoke();
            for k in keys.iter() {
                inv.key(k);
            }
            for (id, actual) in &pairs {
                inv.arg(id).arg(*actual);
            }
            async move { background("token settlement", inv.invoke_async::<i64>(&mut conn)).await }
        });
        let admitting = admits.groups.into_iter().map(|(keys, group)| {
            let mut conn = conn.clone();
            let mut inv = admit.prepare_invoke();
            for k in keys.iter() {
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
    admits: Groups<5, Waiter>,
    settles: Groups<2, Settled>,
}

/// Items grouped by the Redis names of their key (the first name tells keys apart; a
/// round holds few keys, so a scan finds a group).
struct Groups<const N: usize, T> {
    groups: Vec<(Arc<[String; N]>, Vec<T>)>,
}

impl<const N: usize, T> Groups<N, T> {
    fn new() -> Self {
        Groups { groups: Vec::new() }
    }

    fn push(&mut self, keys: Arc<[String; N]>, item: T) {
        match self
            .groups
            .iter_mut()
            .find(|(k, _)| k.first() == keys.first())
        {
            Some((_, items)) => items.push(item),
            None => self.groups.push((keys, vec![item])),
        }
    }
}

impl Round {
    fn of(ops: Vec<Op>) -> Round {
        let mut round = Round {
            admits: Groups::new(),
            settles: Groups::new(),
        };
        for op in ops {
            match op {
                // Its caller gave up waiting (and limited with local counters): not
                // counted in Redis as well.
                Op::Admit { reply, .. } if reply.is_closed() => {}
                Op::Admit { keys, args, reply } => round.admits.push(keys, (args, reply)),
                Op::Settle { keys, id, actual } => round.settles.push(keys, (id, actual)),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    fn names<const N: usize>(key: &str) -> Arc<[String; N]> {
        Arc::new(std::array::from_fn(|i| format!("{key}:{i}")))
    }

    fn admit(key: &str, id: &str) -> Op {
        let (reply, answer) = oneshot::channel();
        // Kept waiting, as a caller does.
        std::mem::forget(answer);
        let args = AdmitArgs {
            rpm: 1,
            tpm: 0,
            max_concurrent: 0,
            reserve: 0,
            id: id.into(),
        };
        Op::Admit {
            keys: names(key),
            args,
            reply,
        }
    }

    #[test]
    fn a_round_groups_by_key_in_arrival_order() {
        let settle = |key: &str, id: &str| Op::Settle {
            keys: names(key),
            id: id.into(),
            actual: 7,
        };
        let (gone, answer) = oneshot::channel();
        drop(answer);
        let round = Round::of(vec![
            Op::Admit {
                keys: names("a"),
                args: AdmitArgs {
                    rpm: 1,
                    tpm: 0,
                    max_concurrent: 0,
                    reserve: 0,
                    id: "gave up".into(),
                },
                reply: gone,
            },
            admit("a", "1"),
            settle("b", "2"),
            admit("b", "3"),
            admit("a", "4"),
            settle("b", "5"),
        ]);
        let admits: Vec<(String, Vec<String>)> = round
            .admits
            .groups
            .iter()
            .map(|(k, g)| (k[0].clone(), g.iter().map(|(a, _)| a.id.clone()).collect()))
            .collect();
        assert_eq!(
            admits,
            [
                ("a:0".to_string(), vec!["1".to_string(), "4".to_string()]),
                ("b:0".to_string(), vec!["3".to_string()])
            ]
        );
        assert_eq!(round.settles.groups.len(), 1);
        assert_eq!(
            round.settles.groups[0].1,
            [("2".into(), 7), ("5".into(), 7)]
        );
    }

    #[tokio::test]
    async fn each_waiter_gets_its_own_verdict_and_a_short_answer_fails_them_all() {
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let group = |a: oneshot::Sender<_>, b: oneshot::Sender<_>| {
            let Op::Admit { args, .. } = admit("k", "x") else {
                unreachable!()
            };
            let Op::Admit { args: args2, .. } = admit("k", "y") else {
                unreachable!()
            };
            vec![(args, a), (args2, b)]
        };
        answer_all(
            group(tx1, tx2),
            Ok(Ok(vec![0, 1, 0, 1, 1, 0, 100, 100, 160])),
        );
        let (a, b) = (rx1.await.unwrap().unwrap(), rx2.await.unwrap().unwrap());
        assert_eq!((a.verdict, a.requests, b.verdict, b.requests), (0, 1, 1, 1));
        assert_eq!((b.oldest_request, b.now), (100, 160));
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        answer_all(group(tx1, tx2), Ok(Ok(vec![0, 1, 0, 100, 100, 160])));
        assert!(rx1.await.unwrap().is_err() && rx2.await.unwrap().is_err());
    }
}
