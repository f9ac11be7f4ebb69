//! Group membership for [`crate::Consumer`]: a background task heartbeats the group
//! coordinator with the subscription and the partitions the consumer owns, and records the
//! assignment the coordinator returns. The consumer applies assignment changes on `poll`
//! (committing before it releases a partition), so a partition is never consumed by two members.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rill_protocol::api::{
    ConsumerGroupHeartbeatRequest, FindCoordinatorRequest, OffsetCommitPartition,
    OffsetCommitTopic, RequestBody, ResponseBody, TopicPartitions,
};
use rill_protocol::ErrorCode;
use tokio::sync::Notify;

use crate::admin::{check, unexpected};
use crate::client::{Client, Purpose};
use crate::error::{ClientError, Result};

/// Group settings of a consumer.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The group to join (1-255 bytes).
    pub group_id: String,
    /// Static membership: a consumer restarted with the same id within the session timeout gets
    /// its partitions back without a rebalance.
    pub instance_id: Option<String>,
    /// The coordinator removes a member it has not heard from for this long. Default 10 s.
    pub session_timeout: Duration,
    /// `range`, `roundrobin` or `sticky` (default), used when the group forms.
    pub assignor: Option<String>,
    /// Commit positions automatically this often (and before giving up partitions); `None` for
    /// manual commits only. Default 5 s.
    pub auto_commit_interval: Option<Duration>,
    /// A consumer that does not poll for this long leaves the group, like Kafka's
    /// `max.poll.interval.ms`. Default 5 min.
    pub max_poll_interval: Duration,
}

impl GroupConfig {
    /// Defaults for `group_id`.
    pub fn new(group_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            assignor: None,
            auto_commit_interval: Some(Duration::from_secs(5)),
            max_poll_interval: Duration::from_secs(300),
        }
    }
}

/// A change of the consumer's partitions, reported by [`crate::Consumer::take_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were added; consumption starts at their committed offsets.
    Assigned(BTreeSet<(String, u32)>),
    /// These partitions were taken away (their positions were committed first when auto-commit is on).
    Revoked(BTreeSet<(String, u32)>),
}

/// State shared by the consumer and its heartbeat task.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    pub member_id: String,
    pub member_epoch: i32,
    /// What the coordinator last said the consumer may consume.
    pub assignment: BTreeSet<(String, u32)>,
    /// What the consumer currently consumes (reported in heartbeats).
    pub owned: BTreeSet<(String, u32)>,
    pub last_poll: Option<Instant>,
    pub left: bool,
    /// The membership was given up without the coordinator (session timeout passed without an
    /// accepted heartbeat): the partitions are lost, not revoked, so nothing is committed for
    /// them (the group has already moved them on).
    pub lost: bool,
    pub error: Option<ClientError>,
    pub coordinator: Option<String>,
}

pub(crate) struct Shared {
    pub membership: Mutex<Membership>,
    /// Wakes the heartbeat task (ownership changed, or leaving).
    pub wake: Notify,
    /// Wakes a consumer waiting for an assignment.
    pub changed: Notify,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address of `group_id`'s coordinator.
pub(crate) async fn find_coordinator(client: &Client, group_id: &str) -> Result<String> {
    let request = RequestBody::FindCoordinator(FindCoordinatorRequest {
        group_id: group_id.to_string(),
    });
    let ResponseBody::FindCoordinator(response) = client.request_any(request).await? else {
        return Err(unexpected());
    };
    if response.error_code != ErrorCode::NONE {
        return Err(ClientError::broker(
            response.error_code,
            format!("find coordinator of group {group_id}"),
            None,
        ));
    }
    Ok(format!("{}:{}", response.host, response.port))
}

/// Sends `body` to the group's coordinator, finding it first if needed; forgets it on
/// NOT_COORDINATOR or a connection failure so the next call looks again.
pub(crate) async fn request_coordinator(
    client: &Client,
    shared: &Shared,
    group_id: &str,
    body: RequestBody,
) -> Result<ResponseBody> {
    let cached = shared.lock().coordinator.clone();
    let address = match cached {
        Some(address) => address,
        None => {
            let address = find_coordinator(client, group_id).await?;
            shared.lock().coordinator = Some(address.clone());
            address
        }
    };
    let result = async {
        client
            .connection(&address, Purpose::Control)
            .await?
            .request(body, client.config().request_timeout)
            .await
    }
    .await;
    if matches!(result, Err(ClientError::Connection { .. })) {
        shared.lock().coordinator = None;
    }
    result
}

/// Offsets grouped by topic, for an OffsetCommit request.
pub(crate) fn commit_topics(offsets: &BTreeMap<(String, u32), u64>) -> Vec<OffsetCommitTopic> {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for ((topic, partition), offset) in offsets {
        let p = OffsetCommitPartition {
            partition: *partition,
            offset: *offset,
            metadata: None,
        };
        match topics.iter_mut().find(|t| t.name == *topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(OffsetCommitTopic {
                name: topic.clone(),
                partitions: vec![p],
            }),
        }
    }
    topics
}

/// Checks an OffsetCommit response: the group-level code, then every partition's.
pub(crate) fn check_commit(response: ResponseBody, group_id: &str) -> Result<()> {
    let ResponseBody::OffsetCommit(response) = response else {
        return Err(unexpected());
    };
    check(
        response.error_code,
        format!("commit to group {group_id}"),
        None,
    )?;
    for topic in response.topics {
        for p in topic.partitions {
            check(
                p.error_code,
                format!("commit {}-{} to group {group_id}", topic.name, p.partition),
                None,
            )?;
        }
    }
    Ok(())
}

/// The committed offsets in an OffsetFetch response (partitions with nothing committed left out).
pub(crate) fn committed_offsets(
    response: ResponseBody,
    group_id: &str,
) -> Result<BTreeMap<(String, u32), u64>> {
    let ResponseBody::OffsetFetch(response) = response else {
        return Err(unexpected());
    };
    check(
        response.error_code,
        format!("fetch committed offsets of group {group_id}"),
        None,
    )?;
    Ok(response
        .topics
        .into_iter()
        .flat_map(|t| {
            t.partitions
                .into_iter()
                .filter_map(move |p| p.offset.map(|o| ((t.name.clone(), p.partition), o)))
        })
        .collect())
}

/// Partitions grouped by topic.
pub(crate) fn to_wire(partitions: &BTreeSet<(String, u32)>) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in partitions {
        match out.iter_mut().find(|t| t.topic == *topic) {
            Some(t) => t.partitions.push(*partition),
            None => out.push(TopicPartitions {
                topic: topic.clone(),
                partitions: vec![*partition],
            }),
        }
    }
    out
}

/// The heartbeat loop; ends when the consumer leaves (close, max poll interval) or is dropped.
pub(crate) async fn heartbeat_loop(
    client: Client,
    shared: Arc<Shared>,
    config: GroupConfig,
    topics: Vec<String>,
) {
    // When the last heartbeat the coordinator accepted was sent. The coordinator expires this
    // member `session_timeout` after it last received one and gives its partitions to
    // others, so the member gives them up itself a margin before that (as Kafka's consumer
    // does on a lost session) instead of consuming alongside their new owners.
    let margin = (config.session_timeout / 5).max(Duration::from_millis(50));
    let release_after = config.session_timeout.saturating_sub(margin);
    let mut last_accepted = Instant::now();
    loop {
        let sent_at = Instant::now();
        let (member_id, member_epoch, owned, leaving) = {
            let m = shared.lock();
            let idle = m
                .last_poll
                .is_some_and(|t| t.elapsed() > config.max_poll_interval);
            if idle && !m.left {
                tracing::warn!(group = %config.group_id, "no poll for {:?}: leaving the group", config.max_poll_interval);
            }
            (
                m.member_id.clone(),
                m.member_epoch,
                m.owned.clone(),
                m.left || idle,
            )
        };
        let request = ConsumerGroupHeartbeatRequest {
            group_id: config.group_id.clone(),
            member_id: member_id.clone(),
            member_epoch: if leaving { -1 } else { member_epoch },
            instance_id: config.instance_id.clone(),
            subscribed_topics: Some(topics.clone()),
            owned: to_wire(&owned),
            session_timeout_ms: config.session_timeout.as_millis() as u32,
            assignor: config.assignor.clone(),
        };
        if leaving && member_id.is_empty() {
            return;
        }
        // Bounded, so a coordinator that stopped answering cannot hold the loop past the
        // release deadline.
        let attempt = (config.session_timeout / 3)
            .min(release_after.saturating_sub(last_accepted.elapsed()))
            .max(Duration::from_millis(50));
        let result = tokio::time::timeout(
            attempt,
            request_coordinator(
                &client,
                &shared,
                &config.group_id,
                RequestBody::ConsumerGroupHeartbeat(request),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout(
                attempt,
                format!("heartbeat to group {}", config.group_id),
            ))
        });
        let interval;
        if leaving {
            let mut m = shared.lock();
            m.left = true;
            m.assignment.clear();
            return;
        }
        match result {
            Ok(ResponseBody::ConsumerGroupHeartbeat(response)) => match response.error_code {
                ErrorCode::NONE => {
                    last_accepted = sent_at;
                    let mut m = shared.lock();
                    m.member_id = response.member_id;
                    m.member_epoch = response.member_epoch;
                    m.assignment = response
                        .assignment
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.clone(), *p)))
                        .collect();
                    m.error = None;
                    drop(m);
                    shared.changed.notify_waiters();
                    interval =
                        Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(50)));
                }
                ErrorCode::UNKNOWN_MEMBER_ID | ErrorCode::FENCED_MEMBER_EPOCH => {
                    tracing::warn!(group = %config.group_id, code = ?response.error_code, "fenced from the group: rejoining");
                    give_up_membership(&shared);
                    interval = Duration::from_millis(50);
                }
                code if code.is_retriable() => {
                    shared.lock().coordinator = None;
                    interval = Duration::from_millis(200);
                }
                code => {
                    let mut m = shared.lock();
                    m.error = Some(ClientError::broker(
                        code,
                        format!("heartbeat to group {}", config.group_id),
                        response.error_message,
                    ));
                    interval = Duration::from_secs(1);
                }
            },
            Ok(_) => interval = Duration::from_secs(1),
            Err(e) => {
                tracing::debug!(group = %config.group_id, "heartbeat failed: {e}");
                shared.lock().coordinator = None;
                interval = Duration::from_millis(200);
            }
        }
        if last_accepted.elapsed() >= release_after {
            let had = {
                let m = shared.lock();
                !m.member_id.is_empty() || !m.assignment.is_empty()
            };
            if had {
                tracing::warn!(group = %config.group_id, session_timeout = ?config.session_timeout, "no heartbeat accepted for almost the session timeout: the coordinator is about to expire this member; releasing every partition (lost, not committed) and rejoining");
                give_up_membership(&shared);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.wake.notified() => {}
        }
    }
}

/// Forgets the membership: the consumer releases every partition on its next poll, as lost
/// (without committing: the group has moved them on already), and the next heartbeat joins as
/// a new member.
fn give_up_membership(shared: &Shared) {
    let mut m = shared.lock();
    m.lost = true;
    m.member_id.clear();
    m.member_epoch = 0;
    m.assignment.clear();
    drop(m);
    shared.changed.notify_waiters();
}
