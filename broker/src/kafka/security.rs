//! Kafka's security APIs as codecs over the shared session and operations
//! (`crate::security`, `ops::users`, `ops::acls`): SaslHandshake (v0: the tokens follow as
//! bare frames, see `kafka::start`; v1: they travel in SaslAuthenticate), SaslAuthenticate, CreateAcls / DescribeAcls / DeleteAcls, and
//! DescribeUserScramCredentials / AlterUserScramCredentials (what `kafka-acls.sh` and
//! `kafka-configs.sh --alter --add-config SCRAM-SHA-256=[...]` send). Kafka's ACL codes are the
//! native protocol's (`rill_protocol::api::AclEntry`), so they pass through unchanged.

use std::sync::Arc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    alter_user_scram_credentials_response::AlterUserScramCredentialsResult,
    describe_user_scram_credentials_response::{
        CredentialInfo, DescribeUserScramCredentialsResult,
    },
    AlterClientQuotasRequest, AlterClientQuotasResponse, AlterUserScramCredentialsRequest,
    AlterUserScramCredentialsResponse, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest,
    DeleteAclsResponse, DescribeAclsRequest, DescribeAclsResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use rill_protocol::api as rill;

use super::errors::kafka_code;
use crate::ops;
use crate::security::Session;
use crate::server::BrokerState;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn message(m: Option<String>) -> Option<StrBytes> {
    m.map(StrBytes::from_string)
}

pub fn sasl_handshake(
    state: &BrokerState,
    session: &mut Session,
    request: SaslHandshakeRequest,
    version: i16,
) -> SaslHandshakeResponse {
    let (code, mechanisms) = session.handshake(state, request.mechanism.as_str());
    if version == 0 {
        session.bare_tokens = true;
    }
    SaslHandshakeResponse::default()
        .with_error_code(kafka_code(code))
        .with_mechanisms(mechanisms.into_iter().map(StrBytes::from_string).collect())
}

pub async fn sasl_authenticate(
    state: &BrokerState,
    session: &mut Session,
    request: SaslAuthenticateRequest,
) -> SaslAuthenticateResponse {
    match session.authenticate(state, request.auth_bytes).await {
        Ok(auth_bytes) => SaslAuthenticateResponse::default().with_auth_bytes(auth_bytes),
        Err((code, e)) => SaslAuthenticateResponse::default()
            .with_error_code(kafka_code(code))
            .with_error_message(Some(StrBytes::from_string(e))),
    }
}

/// Kafka's SCRAM mechanism codes.
fn scram_name(code: i8) -> String {
    match code {
        1 => "SCRAM-SHA-256".into(),
        2 => "SCRAM-SHA-512".into(),
        other => format!("unknown mechanism {other}"),
    }
}

fn scram_code(name: &str) -> i8 {
    match name {
        "SCRAM-SHA-256" => 1,
        "SCRAM-SHA-512" => 2,
        _ => 0,
    }
}

pub async fn alter_user_scram_credentials(
    state: &Arc<BrokerState>,
    session: &Session,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let request = rill::AlterUsersRequest {
        deletions: request
            .deletions
            .into_iter()
            .map(|d| rill::UserDeletion {
                user: d.name.to_string(),
                mechanism: scram_name(d.mechanism),
            })
            .collect(),
        upsertions: request
            .upsertions
            .into_iter()
            .map(|u| rill::UserUpsertion {
                user: u.name.to_string(),
                mechanism: scram_name(u.mechanism),
                iterations: u32::try_from(u.iterations).unwrap_or(0),
                salt: u.salt,
                salted_password: u.salted_password,
            })
            .collect(),
    };
    let response = ops::users::alter_users(state, session, request).await;
    AlterUserScramCredentialsResponse::default().with_results(
        response
            .results
            .into_iter()
            .map(|r| {
                AlterUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(r.user))
                    .with_error_code(kafka_code(r.error_code))
                    .with_error_message(message(r.error_message))
            })
            .collect(),
    )
}

pub fn describe_user_scram_credentials(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let response = ops::users::describe_users(
        state,
        session,
        rill::DescribeUsersRequest {
            users: request
                .users
                .map(|users| users.into_iter().map(|u| u.name.to_string()).collect()),
        },
    );
    DescribeUserScramCredentialsResponse::default()
        .with_error_code(kafka_code(response.error_code))
        .with_error_message(message(response.error_message))
        .with_results(
            response
                .users
                .into_iter()
                .map(|u| {
                    DescribeUserScramCredentialsResult::default()
                        .with_user(StrBytes::from_string(u.user))
                        .with_error_code(kafka_code(u.error_code))
                        .with_credential_infos(
                            u.credentials
                                .iter()
                                .map(|c| {
                                    CredentialInfo::default()
                                        .with_mechanism(scram_code(&c.mechanism))
                                        .with_iterations(c.iterations as i32)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

fn code(c: i8) -> u8 {
    u8::try_from(c).unwrap_or(0)
}

pub async fn create_acls(
    state: &Arc<BrokerState>,
    session: &Session,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let request = rill::CreateAclsRequest {
        acls: request
            .creations
            .into_iter()
            .map(|c| rill::AclEntry {
                resource_type: code(c.resource_type),
                resource_name: c.resource_name.to_string(),
                pattern_type: code(c.resource_pattern_type),
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: code(c.operation),
                permission: code(c.permission_type),
            })
            .collect(),
    };
    let response = ops::acls::create_acls(state, session, request).await;
    CreateAclsResponse::default().with_results(
        response
            .results
            .into_iter()
            .map(|r| {
                AclCreationResult::default()
                    .with_error_code(kafka_code(r.error_code))
                    .with_error_message(message(r.error_message))
            })
            .collect(),
    )
}

fn filter(
    resource_type: i8,
    name: Option<StrBytes>,
    pattern: i8,
    principal: Option<StrBytes>,
    host: Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> rill::AclFilterEntry {
    rill::AclFilterEntry {
        resource_type: code(resource_type),
        resource_name: name.map(|n| n.to_string()),
        pattern_type: code(pattern),
        principal: principal.map(|p| p.to_string()),
        host: host.map(|h| h.to_string()),
        operation: code(operation),
        permission: code(permission),
    }
}

pub fn describe_acls(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let response = ops::acls::describe_acls(
        state,
        session,
        rill::DescribeAclsRequest {
            filter: filter(
                request.resource_type_filter,
                request.resource_name_filter,
                request.pattern_type_filter,
                request.principal_filter,
                request.host_filter,
                request.operation,
                request.permission_type,
            ),
        },
    );
    // Kafka groups the bindings by resource (type, name, pattern).
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for acl in response.acls {
        let description = AclDescription::default()
            .with_principal(text(&acl.principal))
            .with_host(text(&acl.host))
            .with_operation(acl.operation as i8)
            .with_permission_type(acl.permission as i8);
        match resources.iter_mut().find(|r| {
            r.resource_type == acl.resource_type as i8
                && r.resource_name.as_str() == acl.resource_name
                && r.pattern_type == acl.pattern_type as i8
        }) {
            Some(resource) => resource.acls.push(description),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(acl.resource_type as i8)
                    .with_resource_name(text(&acl.resource_name))
                    .with_pattern_type(acl.pattern_type as i8)
                    .with_acls(vec![description]),
            ),
        }
    }
    DescribeAclsResponse::default()
        .with_error_code(kafka_code(response.error_code))
        .with_error_message(message(response.error_message))
        .with_resources(resources)
}

pub async fn delete_acls(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let request = rill::DeleteAclsRequest {
        filters: request
            .filters
            .into_iter()
            .map(|f| {
                filter(
                    f.resource_type_filter,
                    f.resource_name_filter,
                    f.pattern_type_filter,
                    f.principal_filter,
                    f.host_filter,
                    f.operation,
                    f.permission_type,
                )
            })
            .collect(),
    };
    let response = ops::acls::delete_acls(state, session, request).await;
    DeleteAclsResponse::default().with_filter_results(
        response
            .results
            .into_iter()
            .map(|r| {
                DeleteAclsFilterResult::default()
                    .with_error_code(kafka_code(r.error_code))
                    .with_error_message(message(r.error_message))
                    .with_matching_acls(
                        r.deleted
                            .iter()
                            .map(|acl| {
                                DeleteAclsMatchingAcl::default()
                                    .with_resource_type(acl.resource_type as i8)
                                    .with_resource_name(text(&acl.resource_name))
                                    .with_pattern_type(acl.pattern_type as i8)
                                    .with_principal(text(&acl.principal))
                                    .with_host(text(&acl.host))
                                    .with_operation(acl.operation as i8)
                                    .with_permission_type(acl.permission as i8)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Kafka's quota entity type Rill serves (no `user` or `ip` quotas).
const CLIENT_ID: &str = "client-id";

/// AlterClientQuotas (what `kafka-configs.sh --alter --entity-type clients` sends): each
/// entry must name one `client-id` entity (null: the default) and quotas of
/// `producer_byte_rate` / `consumer_byte_rate` with a whole, non-negative value (0: no
/// limit); the valid entries are altered together.
pub async fn alter_client_quotas(
    state: &Arc<BrokerState>,
    session: &Session,
    request: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
    let entity_of = |e: &kafka_protocol::messages::alter_client_quotas_request::EntryData| {
        e.entity
            .iter()
            .map(|c| {
                EntityData::default()
                    .with_entity_type(c.entity_type.clone())
                    .with_entity_name(c.entity_name.clone())
            })
            .collect::<Vec<_>>()
    };
    // Each entry: its alteration, or why Kafka's form of it cannot be served.
    let parsed: Vec<Result<rill::ClientQuotaAlteration, String>> = request
        .entries
        .iter()
        .map(|entry| {
            let [component] = entry.entity.as_slice() else {
                return Err("name exactly one entity: client-id".to_string());
            };
            if component.entity_type.as_str() != CLIENT_ID {
                return Err(format!(
                    "{} quotas are not supported: only client-id",
                    component.entity_type.as_str()
                ));
            }
            let ops = entry
                .ops
                .iter()
                .map(|op| {
                    let value = if op.remove {
                        None
                    } else if op.value.is_finite()
                        && op.value >= 0.0
                        && op.value.fract() == 0.0
                        && op.value < u64::MAX as f64
                    {
                        Some(op.value as u64)
                    } else {
                        return Err(format!(
                            "quota {}: {} is not a whole number of bytes per second",
                            op.key.as_str(),
                            op.value
                        ));
                    };
                    Ok(rill::QuotaOp {
                        key: op.key.to_string(),
                        value,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(rill::ClientQuotaAlteration {
                client_id: component.entity_name.as_ref().map(|n| n.to_string()),
                ops,
            })
        })
        .collect();
    let valid: Vec<rill::ClientQuotaAlteration> =
        parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let mut results = ops::quotas::alter_client_quotas(
        state,
        session,
        rill::AlterClientQuotasRequest { entries: valid },
        request.validate_only,
    )
    .await
    .results
    .into_iter();
    let entries = request
        .entries
        .iter()
        .zip(parsed)
        .map(|(entry, parsed)| {
            let (code, text) = match parsed {
                Err(e) => (
                    kafka_code(rill_protocol::ErrorCode::INVALID_REQUEST),
                    Some(e),
                ),
                Ok(_) => match results.next() {
                    Some(r) => (kafka_code(r.error_code), r.error_message),
                    None => (
                        kafka_code(rill_protocol::ErrorCode::UNKNOWN_SERVER_ERROR),
                        Some("no result for this entry".to_string()),
                    ),
                },
            };
            EntryData::default()
                .with_error_code(code)
                .with_error_message(message(text))
                .with_entity(entity_of(entry))
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}

/// DescribeClientQuotas: the client-id quotas its filter matches (a component on another
/// entity type matches nothing; `strict` with no client-id component matches nothing).
pub fn describe_client_quotas(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    use kafka_protocol::messages::describe_client_quotas_response::{
        EntityData, EntryData, ValueData,
    };
    let response = ops::quotas::describe_client_quotas(state, session);
    if response.error_code != rill_protocol::ErrorCode::NONE {
        return DescribeClientQuotasResponse::default()
            .with_error_code(kafka_code(response.error_code))
            .with_error_message(message(response.error_message))
            .with_entries(None);
    }
    let other_types = request
        .components
        .iter()
        .any(|c| c.entity_type.as_str() != CLIENT_ID);
    let client_filter = request
        .components
        .iter()
        .find(|c| c.entity_type.as_str() == CLIENT_ID);
    let matches = |client: &Option<String>| -> bool {
        if other_types {
            return false;
        }
        match client_filter {
            None => !request.strict,
            Some(c) => match c.match_type {
                0 => client.as_deref() == c._match.as_ref().map(|m| m.as_str()),
                1 => client.is_none(),
                _ => client.is_some(),
            },
        }
    };
    let entries = response
        .entries
        .into_iter()
        .filter(|e| matches(&e.client_id))
        .map(|e| {
            EntryData::default()
                .with_entity(vec![EntityData::default()
                    .with_entity_type(text(CLIENT_ID))
                    .with_entity_name(e.client_id.map(StrBytes::from_string))])
                .with_values(
                    e.values
                        .into_iter()
                        .map(|v| {
                            ValueData::default()
                                .with_key(StrBytes::from_string(v.key))
                                .with_value(v.value as f64)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}
