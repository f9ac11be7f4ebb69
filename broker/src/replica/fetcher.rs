//! Followers' fetching: one task and one connection per leader broker, fetching every partition
//! this broker follows there in one request (as Kafka's replica fetcher threads do). For each
//! partition: fetch at the local log end with the last local epoch; truncate when the leader
//! reports divergence; append what it returns byte for byte; take the leader's high watermark.
//!
//! A partition joins a fetcher with [`Pool::follow`] and leaves when its token is cancelled (its
//! role or epoch changed, or the broker stops); a fetcher with no partitions left ends. A
//! partition whose fetch failed is left out of requests for a short backoff, so one partition's
//! trouble never stalls the others. Local writes happen only while the replica still follows
//! that leader epoch (checked under the log lock), so a fetch in flight when this broker became
//! leader never writes into its log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rill_client::tls::Io;
use rill_protocol::api::{
    ApiKey, FetchPartition, FetchPartitionResponse, FetchRequest, FetchTopic, RequestBody,
    ResponseBody,
};
use rill_protocol::frame::{RequestFrame, RequestHeader, ResponseCodec};
use rill_protocol::ErrorCode;
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{Replica, ReplicaManager};
use crate::controller::NodeId;
use crate::error::{Error, Result};
use crate::log::{TopicPartition, INLINE_APPEND_MAX_BYTES};
use crate::tls::Listener;

/// The leader to fetch from: its node id and client address (one fetcher per leader process;
/// the connection goes to the inter-broker listener it registered, looked up at each connect).
pub(super) struct Target {
    pub node_id: NodeId,
    pub address: String,
    pub epoch: u32,
}

const BACKOFF: Duration = Duration::from_millis(100);

/// One followed partition of a fetcher.
struct Entry {
    replica: Arc<Replica>,
    epoch: u32,
    token: CancellationToken,
    /// Left out of requests until then (its last fetch failed).
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct Fetcher {
    partitions: Mutex<BTreeMap<TopicPartition, Entry>>,
    /// A partition joined: restart the fetch in flight so it is included at once.
    joined: Notify,
}

type Key = (NodeId, String);

/// The fetchers of this broker, one per leader broker.
#[derive(Default)]
pub(super) struct Pool {
    fetchers: Mutex<HashMap<Key, Arc<Fetcher>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Starts fetching `tp` from `target` until `token` is cancelled.
    pub fn follow(
        &self,
        manager: &Arc<ReplicaManager>,
        tp: TopicPartition,
        replica: Arc<Replica>,
        target: Target,
        token: CancellationToken,
    ) {
        let key = (target.node_id, target.address);
        let mut fetchers = lock(&self.fetchers);
        let (fetcher, new) = match fetchers.get(&key) {
            Some(fetcher) => (fetcher.clone(), false),
            None => {
                let fetcher = Arc::new(Fetcher::default());
                fetchers.insert(key.clone(), fetcher.clone());
                (fetcher, true)
            }
        };
        lock(&fetcher.partitions).insert(
            tp,
            Entry {
                replica,
                epoch: target.epoch,
                token,
                retry_at: None,
            },
        );
        fetcher.joined.notify_one();
        if new {
            tokio::spawn(run(manager.clone(), key, fetcher));
        }
    }

    /// Ends `fetcher` if it follows nothing any more; `false` if it must go on.
    fn retire_if_idle(&self, key: &Key, fetcher: &Arc<Fetcher>) -> bool {
        let mut fetchers = lock(&self.fetchers);
        let mut partitions = lock(&fetcher.partitions);
        partitions.retain(|_, e| !e.token.is_cancelled());
        if !partitions.is_empty() {
            return false;
        }
        if fetchers.get(key).is_some_and(|f| Arc::ptr_eq(f, fetcher)) {
            fetchers.remove(key);
        }
        true
    }
}

async fn run(manager: Arc<ReplicaManager>, key: Key, fetcher: Arc<Fetcher>) {
    let leader = key.0;
    // Where the connection goes (the leader's registered inter-broker listener).
    let mut address = String::new();
    let mut connection: Option<Framed<Box<dyn Io>, ResponseCodec>> = None;
    let mut correlation_id = 0u32;
    let mut failures = 0u32;
    let mut rotation = 0usize;
    loop {
        if manager.shutdown.is_cancelled() || manager.fetchers.retire_if_idle(&key, &fetcher) {
            return;
        }
        // The partitions to fetch now, in a rotating order so none is always last in line for
        // the response's byte budget.
        let now = Instant::now();
        let (mut due, next_retry) = {
            let partitions = lock(&fetcher.partitions);
            let due: Vec<(TopicPartition, Arc<Replica>, u32)> = partitions
                .iter()
                .filter(|(_, e)| e.retry_at.is_none_or(|at| at <= now))
                .map(|(tp, e)| (tp.clone(), e.replica.clone(), e.epoch))
                .collect();
            // Only backoffs still running: a past `retry_at` (due now, in this request) would
            // turn the long poll into a busy loop.
            let next_retry = partitions
                .values()
                .filter_map(|e| e.retry_at)
                .filter(|at| *at > now)
                .min();
            (due, next_retry)
        };
        // A partition backing off is fetched again once its backoff ends, not after the other
        // partitions' long poll (up to `replica_fetch_wait_max_ms`): a follower whose first
        // fetch of a new topic raced the leader's creating it held every `acks=all` produce
        // to it for the whole long poll, 500 ms.
        let wait_cap = next_retry.map(|at| at.saturating_duration_since(now));
        if due.is_empty() {
            tokio::select! {
                _ = manager.shutdown.cancelled() => return,
                _ = fetcher.joined.notified() => {}
                _ = tokio::time::sleep(BACKOFF) => {}
            }
            continue;
        }
        rotation = rotation.wrapping_add(1);
        let len = due.len();
        due.rotate_left(rotation % len);
        if connection.is_none() {
            // Follower fetches are served only on the leader's inter-broker listener.
            let registered = manager
                .controller
                .metadata()
                .listeners
                .get(&leader)
                .and_then(|l| l.get(crate::server::REPLICATION_LISTENER))
                .map(|(host, port)| format!("{host}:{port}"));
            let Some(registered) = registered else {
                failures += 1;
                if failures % 50 == 1 {
                    tracing::info!(
                        leader,
                        partitions = len,
                        "the leader has not registered its inter-broker listener yet; waiting"
                    );
                }
                backoff(&manager.shutdown).await;
                continue;
            };
            address = registered;
            let tls = crate::tls::connector(&manager.config.tls, Listener::Replication);
            let connect = rill_client::tls::open(&address, tls);
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(socket)) => {
                    connection = Some(Framed::new(
                        socket,
                        ResponseCodec::new(manager.config.max_frame_bytes),
                    ));
                }
                failed => {
                    failures += 1;
                    if failures % 50 == 1 {
                        let reason = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "connect timed out".to_string(),
                        };
                        tracing::warn!(leader, %address, partitions = len, "cannot reach the partitions' leader ({reason}); retrying");
                    }
                    backoff(&manager.shutdown).await;
                    continue;
                }
            }
        }
        let Some(framed) = connection.as_mut() else {
            continue;
        };
        correlation_id = correlation_id.wrapping_add(1);
        let outcome = tokio::select! {
            _ = manager.shutdown.cancelled() => return,
            // A partition joined: drop this fetch (and the connection it is pending on) so the
            // next request includes it without waiting out the long poll.
            _ = fetcher.joined.notified() => {
                connection = None;
                continue;
            }
            outcome = fetch_round(&manager, &due, framed, correlation_id, wait_cap) => outcome,
        };
        match outcome {
            Ok(responses) => {
                failures = 0;
                for p in responses {
                    let Some((tp, replica, epoch)) = due
                        .iter()
                        .find(|(tp, _, _)| tp.topic == p.0 && tp.partition == p.1.partition)
                    else {
                        continue;
                    };
                    let step = handle_partition(tp, replica, *epoch, p.1).await;
                    let mut partitions = lock(&fetcher.partitions);
                    if let Some(entry) = partitions.get_mut(tp) {
                        entry.retry_at = match step {
                            Step::Continue => None,
                            Step::Backoff => Some(Instant::now() + BACKOFF),
                        };
                    }
                }
            }
            Err(e) => {
                tracing::debug!(leader, %address, "replica fetch failed: {e}");
                connection = None;
                backoff(&manager.shutdown).await;
            }
        }
    }
}

async fn backoff(cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(BACKOFF) => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Backoff,
}

/// One fetch round trip for `due`; returns each partition's answer with its topic.
async fn fetch_round(
    manager: &ReplicaManager,
    due: &[(TopicPartition, Arc<Replica>, u32)],
    framed: &mut Framed<Box<dyn Io>, ResponseCodec>,
    correlation_id: u32,
    wait_cap: Option<Duration>,
) -> Result<Vec<(String, FetchPartitionResponse)>, String> {
    let config = manager.config();
    let max_wait_ms = wait_cap.map_or(config.fetch_wait_max_ms, |cap| {
        config
            .fetch_wait_max_ms
            .min(u32::try_from(cap.as_millis()).unwrap_or(u32::MAX))
    });
    // Each log's end and last epoch, read under its lock: here when the lock is free (the
    // usual case: this fetcher is the log's only writer), else on the blocking pool (a tick
    // or a roll may hold it across an fdatasync).
    let position = |log: &mut crate::log::Log| Ok((log.log_end_offset(), log.last_epoch()));
    let inline: Option<Vec<_>> = due
        .iter()
        .map(|(_, r, _)| r.log.try_with_log(position))
        .collect();
    let positions = match inline {
        Some(positions) => positions.into_iter().collect::<Result<Vec<_>, _>>(),
        None => {
            let replicas: Vec<Arc<Replica>> = due.iter().map(|(_, r, _)| r.clone()).collect();
            tokio::task::spawn_blocking(move || {
                replicas
                    .iter()
                    .map(|r| r.log.with_log(position))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| format!("log position task failed: {e}"))?
        }
    }
    .map_err(|e| e.to_string())?;
    let mut topics: Vec<FetchTopic> = Vec::new();
    for ((tp, _, epoch), (fetch_offset, last_epoch)) in due.iter().zip(positions) {
        let partition = FetchPartition {
            partition: tp.partition,
            current_leader_epoch: Some(*epoch),
            fetch_offset,
            partition_max_bytes: config.fetch_max_bytes,
            last_fetched_epoch: last_epoch,
        };
        match topics.iter_mut().find(|t| t.name == tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(FetchTopic {
                name: tp.topic.clone(),
                partitions: vec![partition],
            }),
        }
    }
    let request = RequestBody::Fetch(FetchRequest {
        replica_id: Some(config.node_id as u32),
        max_wait_ms,
        min_bytes: 1,
        max_bytes: config.fetch_max_bytes,
        topics,
    });
    let frame = RequestFrame {
        header: RequestHeader {
            api_key: ApiKey::Fetch as u16,
            api_version: 0,
            correlation_id,
            client_id: format!("replica-{}", config.node_id),
        },
        body: request.encode_to_bytes(),
    };
    framed.send(frame).await.map_err(|e| e.to_string())?;
    let wait = Duration::from_millis(u64::from(max_wait_ms)) + Duration::from_secs(5);
    let response = match tokio::time::timeout(wait, framed.next()).await {
        Ok(Some(Ok(response))) => response,
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) => return Err("leader closed the connection".into()),
        Err(_) => return Err("fetch timed out".into()),
    };
    if response.header.correlation_id != correlation_id {
        return Err("response for another request".into());
    }
    if response.header.error_code != ErrorCode::NONE {
        return Err(format!(
            "leader refused the fetch: {:?}",
            response.header.error_code
        ));
    }
    let body =
        ResponseBody::decode(ApiKey::Fetch as u16, 0, response.body).map_err(|e| e.to_string())?;
    let ResponseBody::Fetch(body) = body else {
        return Err("not a fetch response".into());
    };
    Ok(body
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name;
            t.partitions.into_iter().map(move |p| (name.clone(), p))
        })
        .collect())
}

async fn handle_partition(
    tp: &TopicPartition,
    replica: &Arc<Replica>,
    epoch: u32,
    p: FetchPartitionResponse,
) -> Step {
    match apply_partition(tp, replica, epoch, p).await {
        Ok(step) => step,
        Err(e) => {
            tracing::debug!(partition = %tp, "replica fetch of the partition failed: {e}");
            Step::Backoff
        }
    }
}

async fn apply_partition(
    tp: &TopicPartition,
    replica: &Arc<Replica>,
    epoch: u32,
    p: FetchPartitionResponse,
) -> Result<Step, String> {
    match p.error_code {
        ErrorCode::NONE => {}
        ErrorCode::OFFSET_OUT_OF_RANGE => {
            let (start, hw) = (p.log_start_offset, p.high_watermark);
            let reset = blocking(replica, epoch, move |log| {
                if log.log_end_offset() < start {
                    tracing::warn!(
                        fetch_offset = log.log_end_offset(),
                        leader_log_start = start,
                        "behind the leader's log start: restarting the local log there"
                    );
                    log.reset_to(start)
                } else {
                    tracing::warn!(
                        fetch_offset = log.log_end_offset(),
                        leader_hw = hw,
                        "ahead of the leader's log end: truncating to its high watermark"
                    );
                    log.truncate_to(hw).map(|_| ())
                }
            })
            .await?;
            return Ok(if reset.is_some() {
                Step::Continue
            } else {
                Step::Backoff
            });
        }
        code => {
            tracing::debug!(partition = %tp, ?code, "leader answered the fetch with an error");
            return Ok(Step::Backoff);
        }
    }
    if let Some(diverging) = p.diverging_epoch {
        let truncated = blocking(replica, epoch, move |log| {
            let own_end = log
                .end_offset_for_epoch(diverging.epoch)
                .map_or(log.log_end_offset(), |(_, end)| end);
            log.truncate_to(diverging.end_offset.min(own_end))
        })
        .await?;
        if let Some(new_end) = truncated {
            tracing::warn!(partition = %tp, epoch = diverging.epoch, leader_end = diverging.end_offset, new_end, "log diverged from the leader's: truncated the divergent tail");
        }
        return Ok(Step::Continue);
    }
    if !p.records.is_empty() {
        let records = p.records.clone();
        // On this task when it only copies into the page cache and the log lock is free (as a
        // leader's produce does), else on the blocking pool.
        let here = (records.len() <= INLINE_APPEND_MAX_BYTES)
            .then(|| {
                replica.log.try_with_log(|log| {
                    if !replica.following(epoch) {
                        return Ok(true);
                    }
                    Ok(log.append_replica_in_page_cache(&records)?.is_some())
                })
            })
            .flatten();
        match here {
            Some(Ok(true)) => {}
            Some(Err(e)) => return Err(write_failed(replica, e)),
            Some(Ok(false)) | None => {
                blocking(replica, epoch, move |log| {
                    log.append_replica(&records).map(|_| ())
                })
                .await?;
            }
        }
    }
    if replica.following(epoch) {
        replica.follower_high_watermark(p.high_watermark);
    }
    Ok(Step::Continue)
}

/// Runs `f` on the replica's log on a blocking thread, only if the replica still follows at
/// `epoch` (checked under the log lock); `None` if it no longer does. A failure is the local
/// disk's (full, I/O error) or a batch that failed validation: logged as an error, and the
/// partition is fetched again after a backoff (it falls out of the ISR if that persists).
async fn blocking<T: Send + 'static>(
    replica: &Arc<Replica>,
    epoch: u32,
    f: impl FnOnce(&mut crate::log::Log) -> Result<T, Error> + Send + 'static,
) -> Result<Option<T>, String> {
    let target = replica.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let log = target.log.clone();
        log.with_log(|log| {
            if !target.following(epoch) {
                return Ok(None);
            }
            f(log).map(Some)
        })
    })
    .await
    .map_err(|e| e.to_string())?;
    outcome.map_err(|e| write_failed(replica, e))
}

/// Logs a failed local write of fetched data (see [`blocking`]) and says why.
fn write_failed(replica: &Replica, e: Error) -> String {
    tracing::error!(partition = %replica.log.topic_partition(), "follower could not write fetched data: {e}");
    e.to_string()
}
