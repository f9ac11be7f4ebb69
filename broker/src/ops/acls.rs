//! ACL management (docs/SECURITY.md "ACLs"): CreateAcls and DeleteAcls need ALTER on the
//! cluster, DescribeAcls DESCRIBE on it. Bindings are checked (`acl::from_entry`) before
//! anything is proposed; ACLs can be managed with `authorization` off, to prepare them.

use std::sync::Arc;

use rill_protocol::api::{
    AclResult, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DeleteAclsResult, DescribeAclsRequest, DescribeAclsResponse,
};
use rill_protocol::ErrorCode;

use crate::controller::{Command, CommandResult};
use crate::security::acl::{self, Operation};
use crate::security::Session;
use crate::server::BrokerState;

pub async fn create_acls(
    state: &Arc<BrokerState>,
    session: &Session,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let fail = |code: ErrorCode, message: String| AclResult {
        error_code: code,
        error_message: Some(message),
    };
    if let Err(code) = session.check_cluster(state, Operation::Alter) {
        return CreateAclsResponse {
            results: request
                .acls
                .iter()
                .map(|_| fail(code, "creating ACLs needs ALTER on the cluster".into()))
                .collect(),
        };
    }
    let parsed: Vec<Result<acl::AclBinding, String>> =
        request.acls.iter().map(acl::from_entry).collect();
    let valid: Vec<acl::AclBinding> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let proposed = if valid.is_empty() {
        Ok(())
    } else {
        super::propose_change(
            state,
            Command::CreateAcls {
                acls: valid.clone(),
            },
        )
        .await
    };
    for binding in &valid {
        if proposed.is_ok() {
            tracing::info!(target: "rill::audit", by = %session.principal, acl = %binding, "ACL created");
        }
    }
    CreateAclsResponse {
        results: parsed
            .into_iter()
            .map(|p| match (p, &proposed) {
                (Err(e), _) => fail(ErrorCode::INVALID_REQUEST, e),
                (Ok(_), Err((code, e))) => fail(*code, e.clone()),
                (Ok(_), Ok(())) => AclResult {
                    error_code: ErrorCode::NONE,
                    error_message: None,
                },
            })
            .collect(),
    }
}

pub fn describe_acls(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let error = |code, message: String| DescribeAclsResponse {
        error_code: code,
        error_message: Some(message),
        acls: Vec::new(),
    };
    if let Err(code) = session.check_cluster(state, Operation::Describe) {
        return error(code, "describing ACLs needs DESCRIBE on the cluster".into());
    }
    let filter = match acl::filter_from_entry(&request.filter) {
        Ok(filter) => filter,
        Err(e) => return error(ErrorCode::INVALID_REQUEST, e),
    };
    let metadata = state.controller.metadata();
    DescribeAclsResponse {
        error_code: ErrorCode::NONE,
        error_message: None,
        acls: metadata
            .acls
            .iter()
            .filter(|a| filter.matches(a))
            .map(acl::to_entry)
            .collect(),
    }
}

pub async fn delete_acls(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let fail = |code, message: String| DeleteAclsResult {
        error_code: code,
        error_message: Some(message),
        deleted: Vec::new(),
    };
    if let Err(code) = session.check_cluster(state, Operation::Alter) {
        return DeleteAclsResponse {
            results: request
                .filters
                .iter()
                .map(|_| fail(code, "deleting ACLs needs ALTER on the cluster".into()))
                .collect(),
        };
    }
    let parsed: Vec<Result<acl::AclFilter, String>> =
        request.filters.iter().map(acl::filter_from_entry).collect();
    let valid: Vec<acl::AclFilter> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let mut deleted = match state
        .controller
        .propose(Command::DeleteAcls { filters: valid })
        .await
    {
        Ok(CommandResult::AclsDeleted(deleted)) => Ok(deleted.into_iter()),
        Ok(other) => Err((ErrorCode::UNKNOWN_SERVER_ERROR, format!("{other:?}"))),
        Err(e) => Err((e.error_code(), e.to_string())),
    };
    DeleteAclsResponse {
        results: parsed
            .into_iter()
            .map(|p| match (p, &mut deleted) {
                (Err(e), _) => fail(ErrorCode::INVALID_REQUEST, e),
                (Ok(_), Err((code, e))) => fail(*code, e.clone()),
                (Ok(_), Ok(deleted)) => {
                    let removed = deleted.next().unwrap_or_default();
                    for binding in &removed {
                        tracing::info!(target: "rill::audit", by = %session.principal, acl = %binding, "ACL deleted");
                    }
                    DeleteAclsResult {
                        error_code: ErrorCode::NONE,
                        error_message: None,
                        deleted: removed.iter().map(acl::to_entry).collect(),
                    }
                }
            })
            .collect(),
    }
}
