//! Fetch: returns whole batches from each requested partition as `Bytes` slices of the segment
//! mapping (sent with a vectored write, never copied), up to `partition_max_bytes` per partition
//! and `max_bytes` per response (at least one batch, so consumers always progress). When fewer
//! than `min_bytes` are available it long-polls: it waits on the partitions' watches (woken by
//! appends, no busy polling) until `min_bytes` arrive or `max_wait_ms` passes (capped by
//! `request_timeout_ms`). Runs as its own task, so a long poll never blocks the reading of the
//! connection's next request.
//!
//! Consumers read only below the high watermark (records every in-sync replica has) and wait on
//! it. Followers (`replica_id` set) read up to the log end and wait on it; their fetch offset
//! and last epoch first go through the replica manager, which records their progress and may
//! answer with a diverging epoch instead of records.
//!
//! A consumer's records count against its client id's fetch quota (`crate::quota`): over
//! it, the response carries the throttle time and the connection is muted for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rill_protocol::api::{
    EpochEndOffset, FetchPartitionResponse, FetchRequest, FetchResponse, FetchTopicResponse,
};
use rill_protocol::batch::peek_offset_and_size;
use rill_protocol::ErrorCode;
use tokio::sync::watch;

use super::local_replica;
use crate::log::{Locking, TopicPartition};
use crate::quota::{Charge, Direction};
use crate::replica::{FollowerFetch, Replica};
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;
use crate::Error;

/// Where one partition of the fetch reads from.
struct Source {
    replica: Arc<Replica>,
    /// The high watermark (consumers) or log end (followers).
    watch: watch::Receiver<u64>,
    follower: bool,
    /// Set for a follower whose log diverges: answered at once, without records.
    diverging: Option<EpochEndOffset>,
}

/// A partition's source, or the error code to answer for it.
type Target = Result<Source, ErrorCode>;

/// Starts the fetch as its own task; resolves to the response, or `None` if a blocking read
/// task failed (logged; answered as UNKNOWN_SERVER_ERROR). A consumer needs `Read` on each
/// topic (TOPIC_AUTHORIZATION_FAILED); a follower fetch is authorized by its door (only the
/// inter-broker listener serves one).
pub fn fetch(
    state: &Arc<BrokerState>,
    session: &Session,
    request: FetchRequest,
) -> BoxFuture<'static, Option<FetchResponse>> {
    let refused = if request.replica_id.is_none() {
        session.refused_topics(
            state,
            Operation::Read,
            request.topics.iter().map(|t| t.name.as_str()),
        )
    } else {
        Default::default()
    };
    let charge = match request.replica_id {
        None => session.charge(state, Direction::Fetch),
        Some(_) => None,
    };
    let state = state.clone();
    let task = tokio::spawn(async move {
        let (started, follower) = (std::time::Instant::now(), request.replica_id.is_some());
        let response = respond(&state, request, &refused).await;
        state.metrics.fetch_done(follower, started.elapsed());
        let mut response = response?;
        if let Some(charge) = charge {
            charged(&state, &charge, &mut response);
        }
        Some(counted(&state, follower, response))
    });
    Box::pin(async move {
        match task.await {
            Ok(response) => response,
            Err(e) => {
                tracing::error!("fetch task failed: {e}");
                None
            }
        }
    })
}

/// The response; `None` if a blocking read task failed (logged).
async fn respond(
    state: &Arc<BrokerState>,
    request: FetchRequest,
    refused: &HashSet<String>,
) -> Option<FetchResponse> {
    let wait_ms = u64::from(request.max_wait_ms).min(state.config.request_timeout_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    // Everything that waits for a partition's log lock (held by appends across fdatasync
    // with flush=always, by rolls and truncation) or may fault in mapped pages from the disk
    // runs on the blocking pool: a slow disk must not stall the async workers that run
    // heartbeats, Raft and every other partition's requests.
    let request = Arc::new(request);
    // Resolved here when every log lock is free (a consumer's fetch takes none); and when every
    // partition reads only what was appended lately (at its end, or a little behind it, as a
    // follower or consumer keeping up with a stream of appends is) the first pass runs here
    // too, so a follower's fetch moves the HW, gets the records and starts its long poll
    // without a trip to the blocking pool. Otherwise the first pass, which may reach cold
    // data, runs there.
    let (targets, mut first) = match resolve(state, &request, refused, Locking::IfFree) {
        Some(targets) => {
            let targets = Arc::new(targets);
            let first = if reads_recent(&request, &targets) {
                read_once(&request, &targets, Locking::IfFree)
            } else {
                None
            };
            (targets, first)
        }
        None => {
            let (state, request) = (state.clone(), request.clone());
            let refused = refused.clone();
            let resolved = tokio::task::spawn_blocking(move || {
                let targets = Arc::new(resolve(&state, &request, &refused, Locking::Wait)?);
                let pass = read_once(&request, &targets, Locking::Wait);
                Some((targets, pass))
            })
            .await;
            match resolved {
                Ok(Some((targets, pass))) => (targets, pass),
                Ok(None) => {
                    tracing::error!("fetch could not resolve its partitions");
                    return None;
                }
                Err(e) => {
                    tracing::error!("fetch task failed: {e}");
                    return None;
                }
            }
        }
    };
    // After a wake-up the new records were just appended (the fetch waited at or near the
    // log end), so they are in the page cache: read them here when every log lock is free,
    // saving the blocking pool's wake-up; a held lock (an append across an fdatasync) sends
    // the pass to the blocking pool as before.
    let mut woken = false;
    loop {
        let inline = if woken {
            read_once(&request, &targets, Locking::IfFree)
        } else {
            first.take()
        };
        let pass = match inline {
            Some(pass) => Some(pass),
            None => {
                let (request, targets) = (request.clone(), targets.clone());
                tokio::task::spawn_blocking(move || read_once(&request, &targets, Locking::Wait))
                    .await
                    .ok()
                    .flatten()
            }
        };
        let Some((response, bytes, any_error)) = pass else {
            tracing::error!("fetch read task failed");
            return None;
        };
        let now = tokio::time::Instant::now();
        if bytes >= request.min_bytes as usize
            || any_error
            || now >= deadline
            || state.shutdown.is_cancelled()
        {
            return Some(response);
        }
        let mut waits: Vec<_> = targets
            .iter()
            .flatten()
            .filter_map(|t| t.as_ref().ok())
            .map(|source| {
                let mut watch = source.watch.clone();
                Box::pin(async move { watch.changed().await })
            })
            .collect();
        if waits.is_empty() {
            return Some(response);
        }
        tokio::select! {
            _ = futures::future::select_all(waits.iter_mut()) => woken = true,
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
}

/// A consumer's fetch under its quota: a client still in debt gets its partitions without
/// records (as Kafka answers a throttled fetch; it fetches them again once unmuted), any
/// other pays for the records it gets. Either way the response says for how long the
/// connection is muted.
fn charged(state: &BrokerState, charge: &Charge, response: &mut FetchResponse) {
    let partitions = response.topics.iter_mut().flat_map(|t| &mut t.partitions);
    let debt = charge.debt(&state.quotas);
    response.throttle_time_ms = if debt.is_zero() {
        let bytes: usize = partitions.map(|p| p.records.len()).sum();
        charge.record(&state.quotas, &state.metrics, bytes as u64)
    } else {
        partitions.for_each(|p| p.records = Bytes::new());
        charge.throttle(&state.metrics, debt)
    };
}

/// `response`, its bytes, records and partition errors counted in the metrics.
fn counted(state: &BrokerState, replica: bool, response: FetchResponse) -> FetchResponse {
    for topic in &response.topics {
        for partition in &topic.partitions {
            state.metrics.partition_error("Fetch", partition.error_code);
            state.metrics.fetched(
                &topic.name,
                std::slice::from_ref(&partition.records),
                replica,
            );
        }
    }
    response
}

/// Resolves each partition once; watches are taken before reading so no append is missed.
/// A follower's fetch takes each log lock (its divergence check reads the log) as `locking`
/// says: `None` if one was held ([`Locking::IfFree`]; the partitions before it have recorded
/// the follower's progress, which the retry on the blocking pool records again, unchanged).
fn resolve(
    state: &Arc<BrokerState>,
    request: &FetchRequest,
    refused: &HashSet<String>,
    locking: Locking,
) -> Option<Vec<Vec<Target>>> {
    let metadata = state.controller.metadata();
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in &request.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let target = if refused.contains(&t.name) {
                Err(ErrorCode::TOPIC_AUTHORIZATION_FAILED)
            } else {
                match local_replica(state, &metadata, &t.name, p.partition) {
                    Ok(replica) => source(state, request, &t.name, p, replica, locking)?,
                    Err(code) => Err(code),
                }
            };
            partitions.push(target);
        }
        topics.push(partitions);
    }
    Some(topics)
}

/// One partition's source (see [`resolve`]).
fn source(
    state: &Arc<BrokerState>,
    request: &FetchRequest,
    topic: &str,
    p: &rill_protocol::api::FetchPartition,
    replica: Arc<Replica>,
    locking: Locking,
) -> Option<Target> {
    let Some(follower) = request.replica_id else {
        if let Err(code) = replica.check_leader(p.current_leader_epoch) {
            return Some(Err(code));
        }
        let watch = replica.log.subscribe_high_watermark();
        return Some(Ok(Source {
            replica,
            watch,
            follower: false,
            diverging: None,
        }));
    };
    let watch = replica.log.subscribe();
    let tp = TopicPartition::new(topic, p.partition);
    let decision = state.replicas.on_follower_fetch(
        &tp,
        &replica,
        u64::from(follower),
        p.current_leader_epoch,
        p.fetch_offset,
        p.last_fetched_epoch,
        locking,
    )?;
    Some(decision.map(|decision| Source {
        replica,
        watch,
        follower: true,
        diverging: match decision {
            FollowerFetch::Read => None,
            FollowerFetch::Diverging(d) => Some(d),
        },
    }))
}

/// Whether every partition that reads records reads only recent appends, checked without
/// locks: it is at its end (the log end for a follower, the HW for a consumer), so a pass
/// reads only what is appended after the fetch arrived, or at or past the log's
/// [`recent_from`](crate::log::PartitionLog::recent_from), pages this broker wrote lately. Either
/// way the pass touches the page cache only, so it may run on an async task.
fn reads_recent(request: &FetchRequest, targets: &[Vec<Target>]) -> bool {
    let partitions = request
        .topics
        .iter()
        .zip(targets)
        .flat_map(|(topic, targets)| topic.partitions.iter().zip(targets));
    partitions.into_iter().all(|(p, target)| match target {
        Ok(source) if source.diverging.is_none() => {
            let log = &source.replica.log;
            let end = if source.follower {
                log.log_end_offset()
            } else {
                log.high_watermark()
            };
            p.fetch_offset >= end || p.fetch_offset >= log.recent_from()
        }
        _ => true,
    })
}

/// One pass over every partition: returns the response, the record bytes in it, and whether a
/// partition failed (errors are answered at once); `None` only with [`Locking::IfFree`] when a
/// log lock was held.
fn read_once(
    request: &FetchRequest,
    targets: &[Vec<Target>],
    locking: Locking,
) -> Option<(FetchResponse, usize, bool)> {
    let mut budget = request.max_bytes as usize;
    let mut total = 0;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    for (topic, targets) in request.topics.iter().zip(targets) {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (p, target) in topic.partitions.iter().zip(targets) {
            let mut response = FetchPartitionResponse {
                partition: p.partition,
                error_code: ErrorCode::NONE,
                high_watermark: 0,
                log_start_offset: 0,
                diverging_epoch: None,
                records: Bytes::new(),
            };
            match target {
                Err(code) => {
                    response.error_code = *code;
                    any_error = true;
                }
                Ok(source) if source.diverging.is_some() => {
                    response.diverging_epoch = source.diverging.clone();
                    response.high_watermark = source.replica.log.high_watermark();
                    any_error = true;
                }
                Ok(source) => {
                    let log = &source.replica.log;
                    let hw = log.high_watermark();
                    // The first batch of the response is always allowed, even past max_bytes.
                    let limit = (p.partition_max_bytes as usize).min(if total == 0 {
                        usize::MAX
                    } else {
                        budget
                    });
                    let read_log = |l: &mut crate::log::Log| {
                        Ok((
                            l.read(p.fetch_offset, limit.max(1)),
                            l.log_end_offset(),
                            l.log_start_offset(),
                        ))
                    };
                    let read = log.with_log_as(locking, read_log)?;
                    match read {
                        Ok((Ok(records), _, start)) => {
                            let records = if source.follower {
                                records
                            } else {
                                below(records, hw)
                            };
                            response.high_watermark = hw;
                            response.log_start_offset = start;
                            let fits = total == 0 || records.len() <= budget;
                            if fits && !records.is_empty() {
                                budget = budget.saturating_sub(records.len());
                                total += records.len();
                                response.records = records;
                            }
                        }
                        Ok((Err(e @ Error::OffsetOutOfRange { .. }), _, start)) => {
                            response.error_code = e.error_code();
                            response.high_watermark = hw;
                            response.log_start_offset = start;
                            any_error = true;
                        }
                        Ok((Err(e), _, _)) | Err(e) => {
                            tracing::error!(topic = %topic.name, partition = p.partition, "fetch read failed: {e}");
                            response.error_code = e.error_code();
                            any_error = true;
                        }
                    }
                }
            }
            partitions.push(response);
        }
        topics.push(FetchTopicResponse {
            name: topic.name.clone(),
            partitions,
        });
    }
    Some((
        FetchResponse {
            topics,
            throttle_time_ms: 0,
        },
        total,
        any_error,
    ))
}

/// The leading whole batches of `records` that lie below `hw` (which is always at a batch
/// boundary: replicas append whole batches).
fn below(records: Bytes, hw: u64) -> Bytes {
    let mut position = 0;
    while let Some((base_offset, size)) = peek_offset_and_size(&records[position..]) {
        if base_offset < 0 || base_offset as u64 >= hw || size <= 0 {
            break;
        }
        position += size as usize;
    }
    records.slice(..position.min(records.len()))
}
