//! OffsetForLeaderEpoch, on the partition leader: where a leader epoch ends in this log (the
//! largest epoch at or below the one asked for, and the offset after its last record), so a
//! consumer that read under an older leader can tell whether its position was truncated away
//! (KIP-320). Answers never pass the high watermark: a consumer's position never does.

use std::sync::Arc;

use rill_protocol::ErrorCode;

use super::leader_replica;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;

/// One partition asked about.
pub struct EpochQuery {
    pub topic: String,
    pub partition: u32,
    /// The leader epoch the client believes current (checked as for fetches), if it sent one.
    pub current_leader_epoch: Option<u32>,
    pub leader_epoch: u32,
}

/// The answer for one partition.
pub struct EpochEnd {
    pub error_code: ErrorCode,
    /// The largest epoch `<= leader_epoch` in the log and where it ends; `None` when the log
    /// has no such epoch (the client's history is older than the log's start).
    pub end: Option<(u32, u64)>,
}

/// Each topic needs `Describe`.
pub async fn offset_for_leader_epoch(
    state: &Arc<BrokerState>,
    session: &Session,
    queries: &[EpochQuery],
) -> Vec<EpochEnd> {
    let refused = session.refused_topics(
        state,
        Operation::Describe,
        queries.iter().map(|q| q.topic.as_str()),
    );
    let metadata = state.controller.metadata();
    let mut answers = Vec::with_capacity(queries.len());
    for query in queries {
        let replica = if refused.contains(&query.topic) {
            Err(ErrorCode::TOPIC_AUTHORIZATION_FAILED)
        } else {
            leader_replica(state, &metadata, &query.topic, query.partition)
        }
        .and_then(|replica| {
            replica.check_leader(query.current_leader_epoch)?;
            Ok(replica)
        });
        let answer = match replica {
            Err(code) => EpochEnd {
                error_code: code,
                end: None,
            },
            Ok(replica) => {
                let log = replica.log.clone();
                let epoch = query.leader_epoch;
                let hw = log.high_watermark();
                // The epoch cache sits under the log lock: off the async threads.
                match tokio::task::spawn_blocking(move || {
                    log.with_log(|l| Ok(l.end_offset_for_epoch(epoch)))
                })
                .await
                {
                    Ok(Ok(end)) => EpochEnd {
                        error_code: ErrorCode::NONE,
                        end: end.map(|(epoch, offset)| (epoch, offset.min(hw))),
                    },
                    Ok(Err(e)) => EpochEnd {
                        error_code: e.error_code(),
                        end: None,
                    },
                    Err(_) => EpochEnd {
                        error_code: ErrorCode::UNKNOWN_SERVER_ERROR,
                        end: None,
                    },
                }
            }
        };
        answers.push(answer);
    }
    answers
}
