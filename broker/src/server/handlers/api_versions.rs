//! ApiVersions: the APIs and version ranges this broker supports.

use rill_protocol::api::{supported_api_versions, ApiKey, ResponseBody};

use super::{reply, Pending};

/// APIs the protocol defines that this broker does not serve yet.
const NOT_SERVED: &[ApiKey] = &[
    ApiKey::FindCoordinator,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
];

pub(super) fn handle() -> Pending {
    let mut versions = supported_api_versions();
    versions
        .apis
        .retain(|api| !NOT_SERVED.iter().any(|key| *key as u16 == api.api_key));
    reply(ResponseBody::ApiVersions(versions))
}
