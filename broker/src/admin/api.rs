//! The JSON API under `/v1/` (docs/OPERATIONS.md "JSON API"): cluster, topics, groups and a
//! bounded record browser.
//!
//! One source of truth: every figure comes from the same `rill_client::Admin` calls the `rill`
//! CLI makes (`rill cluster info`, `rill topic describe`, `rill group describe`), through a
//! client this broker holds to its own native listener. So a partition led by another broker
//! shows that leader's high watermark and log end, and a group coordinated elsewhere shows its
//! coordinator's committed offsets, exactly as the CLI would print them. Topic configs are the
//! DescribeConfigs operation's, answered from the replicated metadata here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rill_client::admin::{RecordSlice, SliceFrom};
use rill_client::{Admin, ClientConfig, ClientError};
use rill_protocol::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::log::TopicPartition;
use crate::server::BrokerState;

/// Records the browser returns per call unless asked for fewer; at most [`MAX_RECORDS`].
pub const DEFAULT_RECORDS: usize = 50;
/// The most records one browser call returns, whatever it asks.
pub const MAX_RECORDS: usize = 1000;
/// Bytes of keys, values and headers per call unless asked for fewer; at most [`MAX_BYTES`].
pub const DEFAULT_BYTES: usize = 1 << 20;
/// The most bytes of keys, values and headers one browser call returns, whatever it asks.
pub const MAX_BYTES: usize = 4 << 20;

/// The admin listener's state: the broker, and a client to its own native listener.
pub struct Api {
    pub state: Arc<BrokerState>,
    admin: tokio::sync::OnceCell<Admin>,
}

impl Api {
    pub fn new(state: Arc<BrokerState>) -> Arc<Api> {
        Arc::new(Api {
            state,
            admin: tokio::sync::OnceCell::new(),
        })
    }

    /// The client, connected on first use (a failed connect is tried again next call).
    async fn admin(&self) -> Result<&Admin, ApiError> {
        self.admin
            .get_or_try_init(|| async {
                let (host, port) = &self.state.advertised;
                let mut config = ClientConfig::new(&format!("{host}:{port}"));
                config.client_id = format!("rill-admin-http-{}", self.state.node_id);
                config.request_timeout = std::time::Duration::from_secs(5);
                config.retry_timeout = std::time::Duration::from_secs(5);
                config.tls = crate::tls::connector(&self.state.tls, crate::tls::Listener::Client);
                let cfg = &self.state.config;
                if let (Some(user), Some(password)) =
                    (&cfg.admin_api_sasl_user, &cfg.admin_api_sasl_password)
                {
                    let mechanism = self
                        .state
                        .security
                        .mechanisms
                        .iter()
                        .find(|m| **m != rill_protocol::sasl::Mechanism::Plain)
                        .or(self.state.security.mechanisms.first())
                        .map_or("SCRAM-SHA-512", |m| m.name());
                    config = config.with_sasl(rill_client::SaslOptions::new(
                        mechanism,
                        user,
                        &password.0,
                    )?);
                }
                rill_client::Client::connect(config).await.map(Admin::new)
            })
            .await
            .map_err(ApiError::from)
    }
}

impl Api {
    /// The high watermarks, asked of their leaders (one DescribeLogs per leader, each within
    /// [`REMOTE_SCRAPE_TIMEOUT`]), of partitions whose offsets groups coordinated here
    /// committed but that have no replica here. A leader that does not answer in time leaves
    /// its partitions out of the group lag metrics of this scrape.
    pub async fn remote_high_watermarks(&self) -> HashMap<TopicPartition, u64> {
        let wanted = crate::metrics::Metrics::group_partitions_elsewhere(&self.state);
        if wanted.is_empty() {
            return HashMap::new();
        }
        let metadata = self.state.controller.metadata();
        let mut by_leader: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for tp in &wanted {
            let leader = metadata
                .topics
                .get(&tp.topic)
                .and_then(|t| t.partitions.get(tp.partition as usize))
                .and_then(|p| p.leader);
            if let Some(leader) = leader.and_then(|l| u32::try_from(l).ok()) {
                by_leader
                    .entry(leader)
                    .or_default()
                    .insert(tp.topic.clone());
            }
        }
        let Ok(Ok(admin)) = tokio::time::timeout(REMOTE_SCRAPE_TIMEOUT, self.admin()).await else {
            return HashMap::new();
        };
        // Each leader within the timeout on its own: a slow one costs only its partitions.
        let answers =
            futures::future::join_all(by_leader.into_iter().map(|(leader, topics)| async move {
                let asked = admin.describe_logs(leader, Some(topics.into_iter().collect()));
                match tokio::time::timeout(REMOTE_SCRAPE_TIMEOUT, asked).await {
                    Ok(Ok(replicas)) => replicas,
                    _ => Vec::new(),
                }
            }))
            .await;
        answers
            .into_iter()
            .flatten()
            .filter(|r| r.leader)
            .map(|r| (TopicPartition::new(r.topic, r.partition), r.high_watermark))
            .filter(|(tp, _)| wanted.binary_search(tp).is_ok())
            .collect()
    }
}

/// How long a scrape waits for other brokers' high watermarks (group lag of partitions
/// without a replica here).
pub const REMOTE_SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// An error answer: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        let status = match e.code() {
            Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION) | Some(ErrorCode::GROUP_ID_NOT_FOUND) => {
                StatusCode::NOT_FOUND
            }
            Some(ErrorCode::INVALID_REQUEST) => StatusCode::BAD_REQUEST,
            _ if matches!(e, ClientError::Invalid(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type Answer = Result<Json<Value>, ApiError>;

fn to_json(value: impl serde::Serialize) -> Answer {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /v1/cluster`: `rill cluster info --format json`, and which broker answered.
pub async fn cluster(State(api): State<Arc<Api>>) -> Answer {
    let cluster = api.admin().await?.cluster().await?;
    let mut value = to_json(cluster)?.0;
    value["served_by"] = json!(api.state.node_id);
    Ok(Json(value))
}

/// `GET /v1/topics`: every topic with partitions, replication health and size.
pub async fn topics(State(api): State<Arc<Api>>) -> Answer {
    to_json(api.admin().await?.topic_summaries().await?)
}

/// `GET /v1/topics/{topic}`: `rill topic describe --format json`, and the topic's configs.
pub async fn topic(State(api): State<Arc<Api>>, Path(topic): Path<String>) -> Answer {
    let configs = crate::ops::describe_configs::topic_configs(
        &api.state,
        &crate::security::Session::internal(),
        &topic,
    )
    .map_err(|code| {
        ApiError::from(ClientError::Broker {
            code,
            context: format!("describe topic {topic}"),
            message: None,
        })
    })?;
    let partitions = api.admin().await?.describe_topic(&topic).await?;
    let configs: Vec<Value> = configs
        .into_iter()
        .map(|c| json!({ "name": c.name, "value": c.value, "source": if c.from_topic { "topic" } else { "broker default" } }))
        .collect();
    Ok(Json(
        json!({ "topic": topic, "partitions": partitions, "configs": configs }),
    ))
}

/// `GET /v1/groups`: `rill group list --format json`.
pub async fn groups(State(api): State<Arc<Api>>) -> Answer {
    to_json(api.admin().await?.list_groups().await?)
}

/// `GET /v1/groups/{group}`: `rill group describe --format json`.
pub async fn group(State(api): State<Arc<Api>>, Path(group): Path<String>) -> Answer {
    to_json(api.admin().await?.group_lag(&group).await?)
}

/// The record browser's query: where to start (one of `offset`, `timestamp` or `from=end`,
/// default the log start), limits, and how to show keys and values.
#[derive(Debug, Deserialize)]
pub struct RecordsQuery {
    offset: Option<u64>,
    timestamp: Option<i64>,
    from: Option<String>,
    max_records: Option<usize>,
    max_bytes: Option<usize>,
    encoding: Option<String>,
}

/// How the browser shows key, value and header bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Text (bytes that are not UTF-8 fall back to hex).
    Utf8,
    /// Parsed JSON (bytes that are not JSON fall back to text, then hex).
    Json,
    Hex,
}

impl Encoding {
    fn parse(name: Option<&str>) -> Result<Encoding, ApiError> {
        match name.unwrap_or("utf8") {
            "utf8" | "text" => Ok(Encoding::Utf8),
            "json" => Ok(Encoding::Json),
            "hex" => Ok(Encoding::Hex),
            other => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown encoding {other:?}: use utf8, json or hex"),
            )),
        }
    }
}

/// `bytes` shown as `encoding` asks, or the first fallback that can show them; returns the
/// value and the encoding used.
pub fn render(bytes: Option<&[u8]>, encoding: Encoding) -> (Value, &'static str) {
    let Some(bytes) = bytes else {
        return (Value::Null, "null");
    };
    if encoding == Encoding::Json {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            return (value, "json");
        }
    }
    if encoding != Encoding::Hex {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return (Value::String(text.to_string()), "utf8");
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (Value::String(hex), "hex")
}

/// `GET /v1/topics/{topic}/partitions/{partition}/records`: at most `max_records` (default
/// 50, at most 1000) records and `max_bytes` (default 1 MiB, at most 4 MiB) of keys, values
/// and headers per call, never past the high watermark. `next_offset` continues.
pub async fn records(
    State(api): State<Arc<Api>>,
    Path((topic, partition)): Path<(String, u32)>,
    Query(query): Query<RecordsQuery>,
) -> Answer {
    let encoding = Encoding::parse(query.encoding.as_deref())?;
    let from = match (query.offset, query.timestamp, query.from.as_deref()) {
        (Some(offset), None, None) => SliceFrom::Offset(offset),
        (None, Some(ts), None) => SliceFrom::Timestamp(ts),
        (None, None, Some("end")) => SliceFrom::End,
        (None, None, Some("start")) | (None, None, None) => SliceFrom::Offset(0),
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give at most one of offset=N, timestamp=MS or from=start|end".into(),
            ))
        }
    };
    let max_records = query
        .max_records
        .unwrap_or(DEFAULT_RECORDS)
        .clamp(1, MAX_RECORDS);
    let max_bytes = query.max_bytes.unwrap_or(DEFAULT_BYTES).clamp(1, MAX_BYTES);
    let slice = api
        .admin()
        .await?
        .read_records(&topic, partition, from, max_records, max_bytes)
        .await?;
    Ok(Json(slice_json(
        &topic,
        partition,
        &slice,
        encoding,
        max_records,
        max_bytes,
    )))
}

fn slice_json(
    topic: &str,
    partition: u32,
    slice: &RecordSlice,
    encoding: Encoding,
    max_records: usize,
    max_bytes: usize,
) -> Value {
    let records: Vec<Value> = slice
        .records
        .iter()
        .map(|r| {
            let (key, key_encoding) = render(r.key.as_deref(), encoding);
            let (value, value_encoding) = render(r.value.as_deref(), encoding);
            let headers: Vec<Value> = r
                .headers
                .iter()
                .map(|h| {
                    json!({
                        "key": String::from_utf8_lossy(&h.key),
                        "value": render(h.value.as_deref(), encoding).0,
                    })
                })
                .collect();
            json!({
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": key,
                "key_encoding": key_encoding,
                "value": value,
                "value_encoding": value_encoding,
                "headers": headers,
            })
        })
        .collect();
    json!({
        "topic": topic,
        "partition": partition,
        "start_offset": slice.start_offset,
        "next_offset": slice.next_offset,
        "high_watermark": slice.high_watermark,
        "truncated": slice.truncated,
        "max_records": max_records,
        "max_bytes": max_bytes,
        "records": records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_render_as_asked_or_fall_back() {
        assert_eq!(render(None, Encoding::Utf8), (Value::Null, "null"));
        assert_eq!(render(Some(b"hi"), Encoding::Utf8), (json!("hi"), "utf8"));
        assert_eq!(render(Some(b"hi"), Encoding::Hex), (json!("6869"), "hex"));
        assert_eq!(
            render(Some(br#"{"a":1}"#), Encoding::Json),
            (json!({"a": 1}), "json")
        );
        assert_eq!(
            render(Some(b"not json"), Encoding::Json),
            (json!("not json"), "utf8")
        );
        assert_eq!(
            render(Some(&[0xff, 0x00]), Encoding::Utf8),
            (json!("ff00"), "hex")
        );
    }
}
