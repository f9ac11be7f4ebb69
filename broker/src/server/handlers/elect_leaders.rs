//! ElectLeaders: preferred leader election on demand (`rill cluster rebalance-leaders`): each
//! partition whose first replica is alive and in sync gets it back as leader, with a new epoch.

use std::sync::Arc;

use rill_protocol::api::{ElectLeadersRequest, ElectLeadersResponse, ResponseBody};

use super::{error_reply, reply, Pending};
use crate::controller::{Command, CommandResult};
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;

/// Needs `Alter` on the cluster.
pub(super) async fn handle(
    state: &Arc<BrokerState>,
    session: &Session,
    request: ElectLeadersRequest,
) -> Pending {
    if let Err(code) = session.check_cluster(state, Operation::Alter) {
        return error_reply(code);
    }
    let command = Command::ElectPreferredLeaders {
        topics: request.topics,
    };
    match state.controller.propose(command).await {
        Ok(CommandResult::Elected {
            elected,
            not_preferred,
        }) => reply(ResponseBody::ElectLeaders(ElectLeadersResponse {
            elected,
            not_preferred,
        })),
        Ok(other) => {
            tracing::warn!(?other, "unexpected outcome of a preferred leader election");
            error_reply(rill_protocol::ErrorCode::UNKNOWN_SERVER_ERROR)
        }
        Err(e) => error_reply(e.error_code()),
    }
}
