//! Users: SCRAM credentials in the replicated metadata (docs/SECURITY.md "Users"). A client
//! sends a salted password (as Kafka's AlterUserScramCredentials); the broker derives the
//! stored and server keys and proposes only those. Altering needs ALTER on the cluster,
//! describing DESCRIBE on it.

use std::sync::Arc;

use rill_protocol::api::{
    AlterUsersRequest, AlterUsersResponse, CredentialInfo, DescribeUsersRequest,
    DescribeUsersResponse, UserDescription, UserResult,
};
use rill_protocol::sasl::{self, Mechanism};
use rill_protocol::ErrorCode;

use crate::controller::metadata::StoredCredential;
use crate::controller::Command;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;

fn result(user: String, error_code: ErrorCode, message: Option<String>) -> UserResult {
    UserResult {
        user,
        error_code,
        error_message: message,
    }
}

fn scram(mechanism: &str) -> Result<Mechanism, String> {
    match Mechanism::from_name(mechanism) {
        Some(m) if m != Mechanism::Plain => Ok(m),
        _ => Err(format!(
            "mechanism {mechanism:?}: SCRAM-SHA-256 or SCRAM-SHA-512 (PLAIN is checked against these)"
        )),
    }
}

pub async fn alter_users(
    state: &Arc<BrokerState>,
    session: &Session,
    request: AlterUsersRequest,
) -> AlterUsersResponse {
    let mut results = Vec::new();
    if let Err(code) = session.check_cluster(state, Operation::Alter) {
        let users = request
            .deletions
            .into_iter()
            .map(|d| d.user)
            .chain(request.upsertions.into_iter().map(|u| u.user));
        return AlterUsersResponse {
            results: users.map(|user| result(user, code, None)).collect(),
        };
    }
    for deletion in request.deletions {
        let outcome = match scram(&deletion.mechanism) {
            Err(e) => Err((ErrorCode::INVALID_REQUEST, e)),
            Ok(mechanism) => {
                super::propose_change(
                    state,
                    Command::DeleteScramCredential {
                        user: deletion.user.clone(),
                        mechanism: mechanism.name().to_string(),
                    },
                )
                .await
            }
        };
        if outcome.is_ok() {
            tracing::info!(user = %deletion.user, mechanism = %deletion.mechanism, by = %session.principal, "deleted a user's credential");
        }
        results.push(to_result(deletion.user, outcome));
    }
    for upsertion in request.upsertions {
        let credential = scram(&upsertion.mechanism).and_then(|mechanism| {
            if upsertion.user.is_empty() || upsertion.user.len() > 255 {
                return Err("user names are 1-255 bytes".to_string());
            }
            sasl::credential(
                mechanism,
                &upsertion.salt,
                &upsertion.salted_password,
                upsertion.iterations,
            )
            .map(|c| (mechanism, c))
            .map_err(|e| e.to_string())
        });
        let outcome = match credential {
            Err(e) => Err((ErrorCode::INVALID_REQUEST, e)),
            Ok((mechanism, c)) => {
                super::propose_change(
                    state,
                    Command::UpsertScramCredential {
                        user: upsertion.user.clone(),
                        mechanism: mechanism.name().to_string(),
                        credential: StoredCredential {
                            salt: c.salt,
                            stored_key: c.stored_key,
                            server_key: c.server_key,
                            iterations: c.iterations,
                        },
                    },
                )
                .await
            }
        };
        if outcome.is_ok() {
            tracing::info!(user = %upsertion.user, mechanism = %upsertion.mechanism, by = %session.principal, "set a user's credential");
        }
        results.push(to_result(upsertion.user, outcome));
    }
    AlterUsersResponse { results }
}

fn to_result(user: String, outcome: Result<(), (ErrorCode, String)>) -> UserResult {
    match outcome {
        Ok(()) => result(user, ErrorCode::NONE, None),
        Err((code, message)) => result(user, code, Some(message)),
    }
}

pub fn describe_users(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeUsersRequest,
) -> DescribeUsersResponse {
    if let Err(code) = session.check_cluster(state, Operation::Describe) {
        return DescribeUsersResponse {
            error_code: code,
            error_message: Some("describing users needs DESCRIBE on the cluster".into()),
            users: Vec::new(),
        };
    }
    let metadata = state.controller.metadata();
    let describe = |user: &str| match metadata.users.get(user) {
        Some(credentials) => UserDescription {
            user: user.to_string(),
            error_code: ErrorCode::NONE,
            credentials: credentials
                .iter()
                .map(|(mechanism, c)| CredentialInfo {
                    mechanism: mechanism.clone(),
                    iterations: c.iterations,
                })
                .collect(),
        },
        None => UserDescription {
            user: user.to_string(),
            error_code: ErrorCode::RESOURCE_NOT_FOUND,
            credentials: Vec::new(),
        },
    };
    let users = match request.users {
        Some(names) => names.iter().map(|n| describe(n)).collect(),
        None => metadata.users.keys().map(|n| describe(n)).collect(),
    };
    DescribeUsersResponse {
        error_code: ErrorCode::NONE,
        error_message: None,
        users,
    }
}
