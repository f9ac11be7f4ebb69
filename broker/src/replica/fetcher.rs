//! A follower's fetch loop for one partition: fetch from the leader at the local log end with
//! the last local epoch; truncate when the leader reports divergence; append what it returns
//! byte for byte; take the leader's high watermark. Runs until cancelled (the role or epoch
//! changed, or the broker stops); reconnects with a short backoff when the leader is unreachable.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rill_protocol::api::{
    ApiKey, FetchPartition, FetchPartitionResponse, FetchRequest, FetchTopic, RequestBody,
    ResponseBody,
};
use rill_protocol::frame::{RequestFrame, RequestHeader, ResponseCodec};
use rill_protocol::ErrorCode;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{Replica, ReplicaManager};
use crate::controller::NodeId;
use crate::error::{Error, Result};
use crate::log::TopicPartition;

/// The leader to fetch from.
pub(super) struct Target {
    pub node_id: NodeId,
    pub address: String,
    pub epoch: u32,
}

const BACKOFF: Duration = Duration::from_millis(100);

pub(super) async fn run(
    manager: Arc<ReplicaManager>,
    tp: TopicPartition,
    replica: Arc<Replica>,
    target: Target,
    cancel: CancellationToken,
) {
    let mut connection: Option<Framed<TcpStream, ResponseCodec>> = None;
    let mut correlation_id = 0u32;
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        if connection.is_none() {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&target.address))
                .await
            {
                Ok(Ok(socket)) => {
                    let _ = socket.set_nodelay(true);
                    connection = Some(Framed::new(
                        socket,
                        ResponseCodec::new(manager.config.max_frame_bytes),
                    ));
                }
                _ => {
                    failures += 1;
                    if failures % 50 == 1 {
                        tracing::warn!(partition = %tp, leader = target.node_id, address = %target.address, "cannot reach the partition leader; retrying");
                    }
                    backoff(&cancel).await;
                    continue;
                }
            }
        }
        let Some(framed) = connection.as_mut() else {
            continue;
        };
        correlation_id = correlation_id.wrapping_add(1);
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = fetch_once(&manager, &tp, &replica, &target, framed, correlation_id) => outcome,
        };
        match outcome {
            Ok(Step::Continue) => failures = 0,
            Ok(Step::Backoff) => backoff(&cancel).await,
            Err(e) => {
                tracing::debug!(partition = %tp, leader = target.node_id, "replica fetch failed: {e}");
                connection = None;
                backoff(&cancel).await;
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

enum Step {
    Continue,
    Backoff,
}

/// One fetch round trip and what follows from it.
async fn fetch_once(
    manager: &ReplicaManager,
    tp: &TopicPartition,
    replica: &Arc<Replica>,
    target: &Target,
    framed: &mut Framed<TcpStream, ResponseCodec>,
    correlation_id: u32,
) -> Result<Step, String> {
    let (fetch_offset, last_epoch) = replica
        .log
        .with_log(|log| Ok((log.log_end_offset(), log.last_epoch())))
        .map_err(|e| e.to_string())?;
    let config = manager.config();
    let request = RequestBody::Fetch(FetchRequest {
        replica_id: Some(config.node_id as u32),
        max_wait_ms: config.fetch_wait_max_ms,
        min_bytes: 1,
        max_bytes: config.fetch_max_bytes,
        topics: vec![FetchTopic {
            name: tp.topic.clone(),
            partitions: vec![FetchPartition {
                partition: tp.partition,
                current_leader_epoch: Some(target.epoch),
                fetch_offset,
                partition_max_bytes: config.fetch_max_bytes,
                last_fetched_epoch: last_epoch,
            }],
        }],
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
    let wait = Duration::from_millis(u64::from(config.fetch_wait_max_ms)) + Duration::from_secs(5);
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
        tracing::debug!(partition = %tp, code = ?response.header.error_code, "leader refused the fetch");
        return Ok(Step::Backoff);
    }
    let body =
        ResponseBody::decode(ApiKey::Fetch as u16, 0, response.body).map_err(|e| e.to_string())?;
    let ResponseBody::Fetch(body) = body else {
        return Err("not a fetch response".into());
    };
    let Some(p) = body
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition == tp.partition)
    else {
        return Err("the response lacks the partition".into());
    };
    handle_partition(tp, replica, p, fetch_offset).await
}

async fn handle_partition(
    tp: &TopicPartition,
    replica: &Arc<Replica>,
    p: FetchPartitionResponse,
    fetch_offset: u64,
) -> Result<Step, String> {
    match p.error_code {
        ErrorCode::NONE => {}
        ErrorCode::OFFSET_OUT_OF_RANGE if fetch_offset < p.log_start_offset => {
            let start = p.log_start_offset;
            tracing::warn!(partition = %tp, fetch_offset, leader_log_start = start, "behind the leader's log start: restarting the local log there");
            blocking(replica, move |log| log.reset_to(start)).await?;
            return Ok(Step::Continue);
        }
        ErrorCode::OFFSET_OUT_OF_RANGE => {
            let hw = p.high_watermark;
            tracing::warn!(partition = %tp, fetch_offset, leader_hw = hw, "ahead of the leader's log end: truncating to its high watermark");
            blocking(replica, move |log| log.truncate_to(hw).map(|_| ())).await?;
            return Ok(Step::Continue);
        }
        code => {
            tracing::debug!(partition = %tp, ?code, "leader answered the fetch with an error");
            return Ok(Step::Backoff);
        }
    }
    if let Some(diverging) = p.diverging_epoch {
        let truncated = blocking(replica, move |log| {
            let own_end = log
                .end_offset_for_epoch(diverging.epoch)
                .map_or(log.log_end_offset(), |(_, end)| end);
            let target = diverging.end_offset.min(own_end);
            log.truncate_to(target)
        })
        .await?;
        tracing::warn!(partition = %tp, epoch = diverging.epoch, leader_end = diverging.end_offset, new_end = truncated, "log diverged from the leader's: truncated the divergent tail");
        return Ok(Step::Continue);
    }
    if !p.records.is_empty() {
        let records = p.records.clone();
        blocking(replica, move |log| log.append_replica(&records).map(|_| ())).await?;
    }
    replica.follower_high_watermark(p.high_watermark);
    Ok(Step::Continue)
}

/// Runs `f` on the replica's log on a blocking thread. A failure is the local disk's (full,
/// I/O error) or a batch that failed validation: logged as an error, then fetched again after
/// a backoff (the follower falls out of the ISR if it persists).
async fn blocking<T: Send + 'static>(
    replica: &Arc<Replica>,
    f: impl FnOnce(&mut crate::log::Log) -> Result<T, Error> + Send + 'static,
) -> Result<T, String> {
    let log = replica.log.clone();
    let outcome = tokio::task::spawn_blocking(move || log.with_log(f))
        .await
        .map_err(|e| e.to_string())?;
    outcome.map_err(|e| {
        tracing::error!(partition = %replica.log.topic_partition(), "follower could not write fetched data: {e}");
        e.to_string()
    })
}
