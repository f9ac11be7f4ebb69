//! InitProducerId: a new idempotent producer id, from this broker's block of ids. Blocks of
//! [`BLOCK`] ids are allocated through the controller (`Command::AllocateProducerIds`, applied
//! once in the metadata log), so no two brokers ever hand out the same id, also across
//! failovers and restarts (a restarted broker takes a new block; unused ids are skipped).

use std::sync::Arc;

use rill_protocol::api::{InitProducerIdRequest, InitProducerIdResponse};
use rill_protocol::ErrorCode;

use crate::controller::{Command, CommandResult};
use crate::security::Session;
use crate::server::BrokerState;

/// Producer ids per block taken from the controller.
pub const BLOCK: u32 = 1000;

/// Needs `IdempotentWrite` on the cluster or `Write` on some topic.
pub async fn init_producer_id(
    state: &Arc<BrokerState>,
    session: &Session,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let answer = |error_code, producer_id: i64| InitProducerIdResponse {
        error_code,
        producer_id,
        producer_epoch: if producer_id < 0 { -1 } else { 0 },
    };
    if request.transactional_id.is_some() {
        // Transactions are not served: the API a transactional producer needs is missing.
        return answer(ErrorCode::UNSUPPORTED_API, -1);
    }
    if !session.may_produce_idempotently(state) {
        return answer(ErrorCode::CLUSTER_AUTHORIZATION_FAILED, -1);
    }
    let mut ids = state.producer_ids.lock().await;
    if ids.is_empty() {
        let command = Command::AllocateProducerIds {
            node_id: state.node_id,
            count: BLOCK,
        };
        match state.controller.propose(command).await {
            Ok(CommandResult::ProducerIds { first, count }) => {
                tracing::info!(first, count, "took a block of producer ids");
                *ids = first..first + u64::from(count);
            }
            Ok(other) => {
                tracing::warn!(?other, "allocating producer ids failed");
                return answer(ErrorCode::UNKNOWN_SERVER_ERROR, -1);
            }
            Err(e) => return answer(e.error_code(), -1),
        }
    }
    match ids.next() {
        Some(id) => answer(ErrorCode::NONE, id as i64),
        None => answer(ErrorCode::UNKNOWN_SERVER_ERROR, -1),
    }
}
