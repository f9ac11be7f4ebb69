//! Client quotas set at run time (docs/SECURITY.md "Quotas"): AlterClientQuotas needs ALTER on
//! the cluster, DescribeClientQuotas DESCRIBE on it. Alterations are checked before anything
//! is proposed and applied all together, as one metadata command; every broker's quotas follow
//! the metadata (`crate::quota::Quotas::rate`).

use std::sync::Arc;

use rill_protocol::api::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, ClientQuotaEntry, ClientQuotaResult,
    DescribeClientQuotasResponse, QuotaValue,
};
use rill_protocol::ErrorCode;

use crate::controller::metadata::{QuotaAlterations, QUOTA_KEYS};
use crate::controller::Command;
use crate::group::coordinator::GROUP_ID_BYTES_MAX;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;

/// Why an alteration is refused before it is proposed, if it is.
fn invalid(client_id: Option<&str>, ops: &[(String, Option<u64>)]) -> Option<String> {
    if client_id.is_some_and(|id| id.len() > GROUP_ID_BYTES_MAX) {
        return Some(format!(
            "a client id has at most {GROUP_ID_BYTES_MAX} bytes"
        ));
    }
    if ops.is_empty() {
        return Some("no quota to set or remove".into());
    }
    ops.iter()
        .find(|(key, _)| !QUOTA_KEYS.contains(&key.as_str()))
        .map(|(key, _)| {
            format!(
                "unknown quota {key:?}: expected one of {}",
                QUOTA_KEYS.join(", ")
            )
        })
}

/// Applies the request's alterations (all or none); with `validate_only` (Kafka's flag) only
/// checks them.
pub async fn alter_client_quotas(
    state: &Arc<BrokerState>,
    session: &Session,
    request: AlterClientQuotasRequest,
    validate_only: bool,
) -> AlterClientQuotasResponse {
    let answer = |code: ErrorCode, message: Option<String>| ClientQuotaResult {
        error_code: code,
        error_message: message,
    };
    let entries: QuotaAlterations = request
        .entries
        .into_iter()
        .map(|e| {
            let ops = e.ops.into_iter().map(|op| (op.key, op.value)).collect();
            (e.client_id, ops)
        })
        .collect();
    if let Err(code) = session.check_cluster(state, Operation::Alter) {
        let message = "altering client quotas needs ALTER on the cluster";
        return AlterClientQuotasResponse {
            results: entries
                .iter()
                .map(|_| answer(code, Some(message.into())))
                .collect(),
        };
    }
    let refusals: Vec<Option<String>> = entries
        .iter()
        .map(|(client, ops)| invalid(client.as_deref(), ops))
        .collect();
    let outcome = if refusals.iter().any(Option::is_some) {
        Err((
            ErrorCode::INVALID_REQUEST,
            "another alteration of the request is invalid; nothing was changed".to_string(),
        ))
    } else if entries.is_empty() || validate_only {
        Ok(())
    } else {
        super::propose_change(
            state,
            Command::AlterClientQuotas {
                entries: entries.clone(),
            },
        )
        .await
    };
    if outcome.is_ok() && !validate_only {
        for (client, ops) in &entries {
            let client = client.as_deref().unwrap_or("<default>");
            tracing::info!(target: "rill::audit", by = %session.principal, client_id = client, ?ops, "client quotas altered");
        }
    }
    AlterClientQuotasResponse {
        results: refusals
            .into_iter()
            .map(|refusal| match (refusal, &outcome) {
                (Some(e), _) => answer(ErrorCode::INVALID_REQUEST, Some(e)),
                (None, Err((code, e))) => answer(*code, Some(e.clone())),
                (None, Ok(())) => answer(ErrorCode::NONE, None),
            })
            .collect(),
    }
}

pub fn describe_client_quotas(
    state: &Arc<BrokerState>,
    session: &Session,
) -> DescribeClientQuotasResponse {
    if let Err(code) = session.check_cluster(state, Operation::Describe) {
        return DescribeClientQuotasResponse {
            error_code: code,
            error_message: Some("describing client quotas needs DESCRIBE on the cluster".into()),
            entries: Vec::new(),
        };
    }
    let metadata = state.controller.metadata();
    DescribeClientQuotasResponse {
        error_code: ErrorCode::NONE,
        error_message: None,
        entries: metadata
            .client_quotas
            .iter()
            .map(|(client_id, values)| ClientQuotaEntry {
                client_id: client_id.clone(),
                values: values
                    .iter()
                    .map(|(key, value)| QuotaValue {
                        key: key.clone(),
                        value: *value,
                    })
                    .collect(),
            })
            .collect(),
    }
}
