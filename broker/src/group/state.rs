//! One consumer group's membership and assignment (Kafka's KIP-848 model, server side).
//!
//! Members send heartbeats carrying their subscription and the partitions they own; the
//! coordinator answers with the partitions they may consume. The *group epoch* increases on
//! every membership or subscription change, and then the assignor computes a new *target
//! assignment*. A member is given a partition from its target only once no other member still
//! owns it (cooperative: a rebalance revokes only what moves, and a partition never has two
//! consumers). A member whose returned assignment equals its target is *reconciled* and takes
//! the group epoch as its *member epoch*; commits and heartbeats with any other epoch are fenced.
//!
//! Pure and deterministic apart from the member ids it mints; time is passed in (`now_ms`: the broker passes a monotonic clock, `log::monotonic_ms`, so wall-clock jumps neither stop nor rush session expiry).

use std::collections::{BTreeMap, BTreeSet};

use crate::group::assignor::{assign, Assignment, MemberSpec, Strategy};
use crate::log::TopicPartition;

/// Most members a group accepts.
pub const MEMBERS_MAX: usize = 1000;

/// A member's heartbeat, as the coordinator sees it.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Empty to join (a new member id is returned).
    pub member_id: String,
    /// -1 to leave, else the epoch last returned to the member (0 when joining).
    pub member_epoch: i32,
    /// Static membership: a restarted member with the same id gets its partitions back.
    pub instance_id: Option<String>,
    /// `None` leaves the subscription unchanged.
    pub subscriptions: Option<BTreeSet<String>>,
    /// Partitions the member currently consumes.
    pub owned: BTreeSet<TopicPartition>,
    pub session_timeout_ms: u64,
    pub assignor: Option<String>,
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    /// What the member may consume now (it must stop consuming anything else).
    pub assignment: BTreeSet<TopicPartition>,
}

/// Why a heartbeat or commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id {0:?}: it left or its session expired; rejoin with epoch 0")]
    UnknownMember(String),
    #[error("member epoch {got} is stale (current {current}); rejoin with epoch 0")]
    FencedMemberEpoch { got: i32, current: i32 },
    #[error("unknown assignor {0:?}: use range, roundrobin or sticky")]
    UnsupportedAssignor(String),
    #[error("the group has {0} members, the maximum")]
    GroupFull(usize),
    #[error("the group has active members; stop them first")]
    NonEmptyGroup,
    #[error("partition {0} is not assigned to this member")]
    NotAssigned(TopicPartition),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: i32,
    pub subscriptions: BTreeSet<String>,
    pub owned: BTreeSet<TopicPartition>,
    /// What the coordinator last told the member it may consume. A partition is free for
    /// another member only when it is in neither this nor `owned`.
    pub assigned: BTreeSet<TopicPartition>,
    pub session_timeout_ms: u64,
    pub last_seen_ms: i64,
    /// Since when the member has owned partitions it was told to give up (`None`: nothing
    /// pending). A member that holds them longer than the rebalance timeout is removed.
    pub revoking_since_ms: Option<i64>,
    /// The member epoch before the last advance: commits sent before the member saw the
    /// heartbeat reply that advanced it are still accepted.
    pub previous_epoch: i32,
}

/// How long a member may keep partitions it was told to release before it is removed from
/// the group (Kafka's rebalance timeout), so one stuck member cannot block a hand-off forever.
pub const REBALANCE_TIMEOUT_MS: i64 = 60_000;

/// The group's state as `DescribeGroups` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    /// Some members have not reached the current target yet.
    Reconciling,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
        }
    }
}

/// One group. See the module docs. Serialized whole into `__consumer_offsets` on every change
/// of [`Group::version`], so a restarted coordinator resumes it without a rebalance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub group_id: String,
    pub epoch: i32,
    pub strategy: Strategy,
    pub members: BTreeMap<String, Member>,
    pub target: Assignment,
    target_epoch: i32,
    next_member: u64,
    heartbeat_interval_ms: u32,
    /// Bumped on every change worth persisting (membership, epochs, target).
    pub version: u64,
}

impl Group {
    pub fn new(group_id: impl Into<String>, heartbeat_interval_ms: u32) -> Group {
        Group {
            group_id: group_id.into(),
            epoch: 0,
            strategy: Strategy::default(),
            members: BTreeMap::new(),
            target: Assignment::new(),
            target_epoch: 0,
            next_member: 0,
            heartbeat_interval_ms,
            version: 0,
        }
    }

    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.values().any(|m| m.member_epoch != self.epoch) {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    /// A member id unique across coordinator restarts: wall-clock time (not the monotonic
    /// `now_ms` the timers use, which restarts with the process) and a counter.
    fn mint_member_id(&mut self) -> String {
        self.next_member += 1;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}-{:x}{:08x}-{}",
            self.group_id,
            wall.as_millis(),
            wall.subsec_nanos(),
            self.next_member
        )
    }

    /// Handles one heartbeat. `topics` gives the partition count of every existing topic.
    pub fn heartbeat(
        &mut self,
        request: Heartbeat,
        now_ms: i64,
        topics: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatReply, GroupError> {
        if let Some(name) = &request.assignor {
            let strategy = Strategy::from_name(name)
                .ok_or_else(|| GroupError::UnsupportedAssignor(name.clone()))?;
            if self.members.is_empty() && strategy != self.strategy {
                self.strategy = strategy;
            }
        }
        let member_id = match request.member_epoch {
            -1 => {
                if self.members.remove(&request.member_id).is_some() {
                    self.bump_epoch();
                }
                return Ok(HeartbeatReply {
                    member_id: request.member_id,
                    member_epoch: -1,
                    heartbeat_interval_ms: 0,
                    assignment: BTreeSet::new(),
                });
            }
            _ if request.member_id.is_empty() => self.join(&request, now_ms)?,
            epoch => {
                let member = self
                    .members
                    .get(&request.member_id)
                    .ok_or_else(|| GroupError::UnknownMember(request.member_id.clone()))?;
                if epoch != member.member_epoch {
                    return Err(GroupError::FencedMemberEpoch {
                        got: epoch,
                        current: member.member_epoch,
                    });
                }
                request.member_id.clone()
            }
        };
        let member = self
            .members
            .get_mut(&member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.clone()))?;
        member.last_seen_ms = now_ms;
        member.session_timeout_ms = request.session_timeout_ms.max(1);
        member.owned = request.owned;
        let mut changed = false;
        if let Some(subscriptions) = request.subscriptions {
            changed = subscriptions != member.subscriptions;
            member.subscriptions = subscriptions;
        }
        if changed {
            self.bump_epoch();
        }
        self.retarget(topics);
        let target = self.target.get(&member_id).cloned().unwrap_or_default();
        if let Some(member) = self.members.get_mut(&member_id) {
            if member.owned.is_subset(&target) {
                member.revoking_since_ms = None;
            } else {
                member.revoking_since_ms.get_or_insert(now_ms);
            }
        }
        Ok(self.reply(&member_id))
    }

    /// Adds a member (or takes over a static member's slot) and returns its id.
    fn join(&mut self, request: &Heartbeat, now_ms: i64) -> Result<String, GroupError> {
        let previous = request.instance_id.as_ref().and_then(|instance| {
            self.members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.member_id.clone())
        });
        let new_id = self.mint_member_id();
        if let Some(old_id) = previous {
            // Static membership: same slot, same target, no rebalance; the old id is fenced.
            self.version += 1;
            if let Some(mut member) = self.members.remove(&old_id) {
                member.member_id = new_id.clone();
                self.members.insert(new_id.clone(), member);
                if let Some(target) = self.target.remove(&old_id) {
                    self.target.insert(new_id.clone(), target);
                }
            }
            return Ok(new_id);
        }
        if self.members.len() >= MEMBERS_MAX {
            return Err(GroupError::GroupFull(MEMBERS_MAX));
        }
        self.members.insert(
            new_id.clone(),
            Member {
                member_id: new_id.clone(),
                instance_id: request.instance_id.clone(),
                member_epoch: 0,
                subscriptions: BTreeSet::new(),
                owned: BTreeSet::new(),
                assigned: BTreeSet::new(),
                session_timeout_ms: request.session_timeout_ms.max(1),
                last_seen_ms: now_ms,
                revoking_since_ms: None,
                previous_epoch: 0,
            },
        );
        self.bump_epoch();
        Ok(new_id)
    }

    /// Recomputes the target if the group epoch moved past it.
    fn retarget(&mut self, topics: &BTreeMap<String, u32>) {
        if self.target_epoch == self.epoch {
            return;
        }
        let specs: Vec<MemberSpec> = self
            .members
            .values()
            .map(|m| MemberSpec {
                member_id: m.member_id.clone(),
                subscriptions: m.subscriptions.clone(),
                current: self.target.get(&m.member_id).cloned().unwrap_or_default(),
            })
            .collect();
        self.target = assign(self.strategy, &specs, topics);
        self.target_epoch = self.epoch;
    }

    /// The member's target minus what other members still own; reconciled members take the group epoch.
    fn reply(&mut self, member_id: &str) -> HeartbeatReply {
        let owned_elsewhere: BTreeSet<&TopicPartition> = self
            .members
            .values()
            .filter(|m| m.member_id != member_id)
            .flat_map(|m| m.owned.iter().chain(m.assigned.iter()))
            .collect();
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let assignment: BTreeSet<TopicPartition> = target
            .iter()
            .filter(|tp| !owned_elsewhere.contains(tp))
            .cloned()
            .collect();
        // Reconciled: nothing withheld from the member, and it has released what it must give up.
        let released = self
            .members
            .get(member_id)
            .is_some_and(|m| m.owned.is_subset(&target));
        let reconciled = assignment.len() == target.len() && released;
        let epoch = self.epoch;
        let member = self
            .members
            .get_mut(member_id)
            .expect("reply is only called for a present member");
        let mut changed = member.assigned != assignment;
        if reconciled && member.member_epoch != epoch {
            member.previous_epoch = member.member_epoch;
            member.member_epoch = epoch;
            changed = true;
        }
        member.assigned = assignment.clone();
        let member_epoch = member.member_epoch;
        if changed {
            self.version += 1;
        }
        // While partitions are withheld, ask for heartbeats sooner so the hand-off is quick.
        let interval = if reconciled {
            self.heartbeat_interval_ms
        } else {
            (self.heartbeat_interval_ms / 5).max(50)
        };
        HeartbeatReply {
            member_id: member_id.to_string(),
            member_epoch,
            heartbeat_interval_ms: interval,
            assignment,
        }
    }

    fn bump_epoch(&mut self) {
        self.epoch += 1;
        self.version += 1;
    }

    /// After a coordinator restart: every member gets a full session from `now_ms` to come back.
    pub fn restored(mut self, now_ms: i64) -> Group {
        for member in self.members.values_mut() {
            member.last_seen_ms = now_ms;
            member.revoking_since_ms = member.revoking_since_ms.map(|_| now_ms);
        }
        self
    }

    /// Removes members whose session expired, or that held partitions they were told to release
    /// for longer than [`REBALANCE_TIMEOUT_MS`]; returns their ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                let session_expired = now_ms - m.last_seen_ms > m.session_timeout_ms as i64;
                let revocation_stuck = m
                    .revoking_since_ms
                    .is_some_and(|since| now_ms - since > REBALANCE_TIMEOUT_MS);
                session_expired || revocation_stuck
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
            self.target.remove(id);
        }
        if !expired.is_empty() {
            self.bump_epoch();
        }
        expired
    }

    /// Checks an offset commit: a member at its current epoch committing a partition it is
    /// assigned or owns, or an admin commit (empty member id, epoch < 0) to a group with no members.
    pub fn validate_commit(
        &self,
        member_id: &str,
        member_epoch: i32,
        tp: &TopicPartition,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() && member_epoch < 0 {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::NonEmptyGroup)
            };
        }
        let member = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        // The previous epoch too: a commit may cross the heartbeat reply that advanced the epoch.
        if member_epoch != member.member_epoch && member_epoch != member.previous_epoch {
            return Err(GroupError::FencedMemberEpoch {
                got: member_epoch,
                current: member.member_epoch,
            });
        }
        let assigned =
            self.target.get(member_id).is_some_and(|t| t.contains(tp)) || member.owned.contains(tp);
        if !assigned {
            return Err(GroupError::NotAssigned(tp.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> BTreeMap<String, u32> {
        BTreeMap::from([("t".to_string(), 12)])
    }

    fn join(group: &mut Group, now: i64, instance: Option<&str>) -> HeartbeatReply {
        let request = Heartbeat {
            member_epoch: 0,
            instance_id: instance.map(String::from),
            subscriptions: Some(BTreeSet::from(["t".to_string()])),
            session_timeout_ms: 1000,
            ..Heartbeat::default()
        };
        group.heartbeat(request, now, &topics()).unwrap()
    }

    fn beat(
        group: &mut Group,
        reply: &HeartbeatReply,
        owned: &BTreeSet<TopicPartition>,
        now: i64,
    ) -> Result<HeartbeatReply, GroupError> {
        let request = Heartbeat {
            member_id: reply.member_id.clone(),
            member_epoch: reply.member_epoch,
            owned: owned.clone(),
            session_timeout_ms: 1000,
            ..Heartbeat::default()
        };
        group.heartbeat(request, now, &topics())
    }

    /// Heartbeats every member (owning what it was last given) until all are reconciled.
    fn settle(group: &mut Group, replies: &mut [HeartbeatReply], now: i64) {
        for _ in 0..10 {
            for reply in replies.iter_mut() {
                *reply = beat(group, reply, &reply.assignment.clone(), now).unwrap();
            }
            if group.state() == GroupState::Stable {
                return;
            }
        }
        panic!("group did not settle: {group:?}");
    }

    fn assert_exclusive(replies: &[HeartbeatReply]) {
        let mut seen = BTreeSet::new();
        for r in replies {
            for tp in &r.assignment {
                assert!(seen.insert(tp.clone()), "{tp} given to two members at once");
            }
        }
    }

    #[test]
    fn three_members_split_twelve_partitions_and_a_fourth_takes_only_what_moves() {
        let mut group = Group::new("g", 500);
        let mut replies = vec![
            join(&mut group, 0, None),
            join(&mut group, 0, None),
            join(&mut group, 0, None),
        ];
        settle(&mut group, &mut replies, 1);
        assert!(replies.iter().all(|r| r.assignment.len() == 4));
        let before: Vec<BTreeSet<TopicPartition>> =
            replies.iter().map(|r| r.assignment.clone()).collect();

        let newcomer = join(&mut group, 2, None);
        assert!(
            newcomer.assignment.is_empty(),
            "partitions are withheld until their owners release them"
        );
        replies.push(newcomer);
        for round in 0..10 {
            for reply in replies.iter_mut() {
                *reply = beat(&mut group, reply, &reply.assignment.clone(), 3 + round).unwrap();
            }
            assert_exclusive(&replies);
        }
        assert_eq!(group.state(), GroupState::Stable);
        assert!(replies.iter().all(|r| r.assignment.len() == 3));
        let moved: usize = before
            .iter()
            .zip(&replies)
            .map(|(b, r)| b.difference(&r.assignment).count())
            .sum();
        assert_eq!(moved, 3, "only the newcomer's share moved");
    }

    #[test]
    fn an_expired_member_loses_its_partitions_and_a_stale_commit_is_fenced() {
        let mut group = Group::new("g", 500);
        let mut replies = vec![join(&mut group, 0, None), join(&mut group, 0, None)];
        settle(&mut group, &mut replies, 0);
        let dead = replies.remove(1);
        let tp = dead.assignment.iter().next().unwrap().clone();
        group
            .validate_commit(&dead.member_id, dead.member_epoch, &tp)
            .unwrap();
        replies[0] = beat(
            &mut group,
            &replies[0],
            &replies[0].assignment.clone(),
            1_500,
        )
        .unwrap();
        assert_eq!(
            group.expire(2_000),
            vec![dead.member_id.clone()],
            "only the silent member expires"
        );
        assert!(matches!(
            group.validate_commit(&dead.member_id, dead.member_epoch, &tp),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(matches!(
            beat(&mut group, &dead, &BTreeSet::new(), 2_000),
            Err(GroupError::UnknownMember(_))
        ));
        settle(&mut group, &mut replies, 2_000);
        assert_eq!(replies[0].assignment.len(), 12, "the survivor takes over");
        let stale = HeartbeatReply {
            member_epoch: replies[0].member_epoch - 1,
            ..replies[0].clone()
        };
        assert!(matches!(
            beat(&mut group, &stale, &BTreeSet::new(), 2_001),
            Err(GroupError::FencedMemberEpoch { .. })
        ));
        assert!(
            matches!(
                group.validate_commit("", -1, &tp),
                Err(GroupError::NonEmptyGroup)
            ),
            "admin commits need an empty group"
        );
    }

    #[test]
    fn a_static_member_gets_its_partitions_back_without_a_rebalance() {
        let mut group = Group::new("g", 500);
        let mut replies = vec![
            join(&mut group, 0, Some("host-a")),
            join(&mut group, 0, Some("host-b")),
        ];
        settle(&mut group, &mut replies, 0);
        let epoch = group.epoch;
        let before = replies[0].assignment.clone();
        let restarted = join(&mut group, 100, Some("host-a"));
        assert_eq!(group.epoch, epoch, "no rebalance");
        assert_eq!(restarted.assignment, before);
        assert!(
            matches!(
                beat(&mut group, &replies[0], &before, 101),
                Err(GroupError::UnknownMember(_))
            ),
            "the old incarnation is fenced"
        );
    }

    #[test]
    fn a_member_that_never_releases_is_removed_after_the_rebalance_timeout() {
        let mut group = Group::new("g", 500);
        let mut replies = vec![join(&mut group, 0, None), join(&mut group, 0, None)];
        settle(&mut group, &mut replies, 0);
        let stubborn = replies[0].clone();
        let mut others = [replies[1].clone(), join(&mut group, 10, None)];
        // The stubborn member keeps heartbeating but keeps reporting everything it had; the
        // others behave (they own what they were given).
        let mut t = 10;
        while t < REBALANCE_TIMEOUT_MS {
            beat(&mut group, &stubborn, &stubborn.assignment, t).unwrap();
            for other in others.iter_mut() {
                *other = beat(&mut group, other, &other.assignment.clone(), t).unwrap();
            }
            t += 500;
        }
        assert!(
            group.expire(t).is_empty(),
            "still within the rebalance timeout"
        );
        let t = REBALANCE_TIMEOUT_MS + 100;
        beat(&mut group, &stubborn, &stubborn.assignment, t).unwrap();
        for other in others.iter_mut() {
            *other = beat(&mut group, other, &other.assignment.clone(), t).unwrap();
        }
        assert_eq!(group.expire(t + 100), vec![stubborn.member_id.clone()]);
        let newcomer = others[1].clone();
        assert!(group.members.contains_key(&newcomer.member_id));
    }

    #[test]
    fn leaving_rebalances_and_unknown_assignors_are_refused() {
        let mut group = Group::new("g", 500);
        let mut replies = vec![join(&mut group, 0, None), join(&mut group, 0, None)];
        settle(&mut group, &mut replies, 0);
        let leave = Heartbeat {
            member_id: replies[1].member_id.clone(),
            member_epoch: -1,
            ..Heartbeat::default()
        };
        group.heartbeat(leave, 1, &topics()).unwrap();
        replies.truncate(1);
        settle(&mut group, &mut replies, 2);
        assert_eq!(replies[0].assignment.len(), 12);
        let bad = Heartbeat {
            member_epoch: 0,
            assignor: Some("magic".into()),
            ..Heartbeat::default()
        };
        assert!(matches!(
            group.heartbeat(bad, 3, &topics()),
            Err(GroupError::UnsupportedAssignor(_))
        ));
    }
}
