//! ApiVersions: the APIs and version ranges this broker supports.

use rill_protocol::api::{supported_api_versions, ResponseBody};

use super::{reply, Pending};

pub(super) fn handle() -> Pending {
    reply(ResponseBody::ApiVersions(supported_api_versions()))
}
