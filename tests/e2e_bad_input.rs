//! Bad input against a real broker, over raw TCP: every case gets the right error code or a
//! closed connection, and the broker keeps serving with its data intact.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::raw::Raw;
use common::{batch, BrokerProcess};
use rill_protocol::api::*;
use rill_protocol::batch::{Compression, RecordBatchBuilder};
use rill_protocol::frame::RequestHeader;
use rill_protocol::wire::{encode_to_bytes, Wire};
use rill_protocol::ErrorCode;

fn produce(topic: &str, records: Bytes) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition: 0,
                records,
            }],
        }],
    })
}

fn produce_code(raw: &mut Raw, topic: &str, records: Bytes) -> ErrorCode {
    produce_outcome(raw, topic, records).0
}

fn produce_outcome(raw: &mut Raw, topic: &str, records: Bytes) -> (ErrorCode, Option<String>) {
    let ResponseBody::Produce(response) = raw.call(produce(topic, records)) else {
        panic!("wrong response type")
    };
    let partition = &response.topics[0].partitions[0];
    (partition.error_code, partition.error_message.clone())
}

/// Repairs the CRC of a batch whose covered bytes were changed.
fn with_crc(mut bytes: Vec<u8>) -> Bytes {
    let crc = rill_protocol::batch::checksum(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

/// `records` records of value `value`, compressed with `codec`.
fn compressed_batch(codec: Compression, records: usize, value: &[u8]) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    for i in 0..records {
        builder.append(i as i64, None, Some(value), &[]);
    }
    builder.build_compressed(codec).unwrap()
}

fn create(
    raw: &mut Raw,
    name: &str,
    partitions: u32,
    replication_factor: u16,
    configs: Vec<ConfigEntry>,
) -> ErrorCode {
    let request = CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: name.into(),
            partitions,
            replication_factor,
            configs,
        }],
        timeout_ms: 1000,
        validate_only: false,
    };
    let ResponseBody::CreateTopics(response) = raw.call(RequestBody::CreateTopics(request)) else {
        panic!("wrong response type")
    };
    response.topics[0].error_code
}

#[test]
fn every_bad_input_gets_a_clear_error_and_the_broker_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(
        data.path(),
        &["--max-frame-bytes", "1048576", "--max-batch-bytes", "65536"],
    );
    let mut raw = Raw::connect(&broker.address);
    common::eventually(Duration::from_secs(30), "the broker to register", || {
        raw.send(
            ApiKey::Metadata as u16,
            0,
            &encode_to_bytes(&MetadataRequest { topics: None }),
        );
        let (header, body) = raw.receive().expect("a response");
        if header.error_code == ErrorCode::CLUSTER_NOT_READY {
            return false; // retriable: the metadata quorum is still electing
        }
        let Ok(ResponseBody::Metadata(m)) = ResponseBody::decode(ApiKey::Metadata as u16, 0, body)
        else {
            return false;
        };
        !m.brokers.is_empty()
    });
    assert_eq!(create(&mut raw, "good", 1, 1, vec![]), ErrorCode::NONE);
    assert_eq!(
        produce_code(&mut raw, "good", batch(3, 10, 0, 1)),
        ErrorCode::NONE
    );

    // Topic-level validation.
    assert_eq!(
        create(&mut raw, "good", 1, 1, vec![]),
        ErrorCode::TOPIC_ALREADY_EXISTS
    );
    assert_eq!(
        create(&mut raw, "bad/name", 1, 1, vec![]),
        ErrorCode::INVALID_TOPIC
    );
    assert_eq!(create(&mut raw, "", 1, 1, vec![]), ErrorCode::INVALID_TOPIC);
    assert_eq!(
        create(&mut raw, "zero", 0, 1, vec![]),
        ErrorCode::INVALID_PARTITIONS
    );
    assert_eq!(
        create(&mut raw, "wide", 1, 2, vec![]),
        ErrorCode::INVALID_REPLICATION_FACTOR
    );
    assert_eq!(
        create(
            &mut raw,
            "cfg",
            1,
            1,
            vec![ConfigEntry {
                key: "colour".into(),
                value: "red".into()
            }]
        ),
        ErrorCode::INVALID_CONFIG
    );

    // Produce errors.
    assert_eq!(
        produce_code(&mut raw, "missing", batch(1, 10, 0, 1)),
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        produce_code(&mut raw, "good", batch(100, 1000, 0, 1)),
        ErrorCode::MESSAGE_TOO_LARGE
    );
    let mut corrupt = batch(2, 10, 0, 1).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce_code(&mut raw, "good", Bytes::from(corrupt)),
        ErrorCode::CORRUPT_MESSAGE
    );
    assert_eq!(
        produce_code(&mut raw, "good", Bytes::from_static(b"not a batch at all")),
        ErrorCode::CORRUPT_MESSAGE
    );
    // Poison batches (review #11): a "compressed" batch whose records are not what its codec
    // says, or whose record count is a lie, is refused, not stored for every consumer to fail
    // on; so is an uncompressed batch whose count disagrees with its records.
    let mut compressed = batch(1, 10, 0, 1).to_vec();
    compressed[21..23].copy_from_slice(&4i16.to_be_bytes()); // zstd, but the records are plain
    assert_eq!(
        produce_code(&mut raw, "good", with_crc(compressed.clone())),
        ErrorCode::CORRUPT_MESSAGE
    );
    compressed[21..23].copy_from_slice(&5i16.to_be_bytes()); // no such codec
    assert_eq!(
        produce_code(&mut raw, "good", with_crc(compressed.clone())),
        ErrorCode::UNSUPPORTED_COMPRESSION
    );
    let mut lying = compressed_batch(Compression::Lz4, 1, b"a").to_vec();
    lying[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    lying[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "good", with_crc(lying)),
        ErrorCode::CORRUPT_MESSAGE
    );
    let mut miscounted = batch(2, 10, 0, 1).to_vec();
    miscounted[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "good", with_crc(miscounted)),
        ErrorCode::CORRUPT_MESSAGE
    );
    // Internal topics are written by brokers only (forged commits, unreplayable batches).
    assert_eq!(
        produce_code(&mut raw, "__consumer_offsets", batch(1, 10, 0, 1)),
        ErrorCode::INVALID_TOPIC
    );

    // Fetch out of range.
    let fetch = FetchRequest {
        replica_id: None,
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: "good".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                current_leader_epoch: None,
                fetch_offset: 999,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: None,
            }],
        }],
    };
    let ResponseBody::Fetch(response) = raw.call(RequestBody::Fetch(fetch)) else {
        panic!("wrong response type")
    };
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        ErrorCode::OFFSET_OUT_OF_RANGE
    );
    assert_eq!(response.topics[0].partitions[0].high_watermark, 3);

    // acks = 0: no response at all; the next response on the connection answers the next request.
    let fire_and_forget = RequestBody::Produce(ProduceRequest {
        acks: Acks::None,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "good".into(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: batch(2, 10, 0, 2),
            }],
        }],
    });
    raw.send(
        ApiKey::Produce as u16,
        0,
        &fire_and_forget.encode_to_bytes(),
    );
    let ResponseBody::ListOffsets(offsets) =
        raw.call(RequestBody::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "good".into(),
                partitions: vec![ListOffsetsPartition {
                    partition: 0,
                    current_leader_epoch: None,
                    spec: OffsetSpec::Latest,
                }],
            }],
        }))
    else {
        panic!("the response after an acks=0 produce must be the next request's")
    };
    assert_eq!(
        offsets.topics[0].partitions[0].offset,
        Some(5),
        "the acks=0 batch was appended"
    );

    // Request-level errors keep the connection open.
    raw.send(999, 0, &[]);
    assert_eq!(
        raw.receive().unwrap().0.error_code,
        ErrorCode::UNSUPPORTED_API
    );
    raw.send(ApiKey::Metadata as u16, 7, &[0]);
    assert_eq!(
        raw.receive().unwrap().0.error_code,
        ErrorCode::UNSUPPORTED_VERSION
    );
    raw.send(ApiKey::Metadata as u16, 0, &[0, 1, 2, 3]);
    assert_eq!(
        raw.receive().unwrap().0.error_code,
        ErrorCode::INVALID_REQUEST
    );
    raw.send(ApiKey::Produce as u16, 0, &[9, 9, 9]);
    assert_eq!(
        raw.receive().unwrap().0.error_code,
        ErrorCode::INVALID_REQUEST
    );

    // An oversized frame: REQUEST_TOO_LARGE, then the connection closes (nothing was allocated for it).
    let mut big = Raw::connect(&broker.address);
    let mut header = BytesMut::new();
    header.put_u32(2 << 20);
    RequestHeader {
        api_key: ApiKey::Produce as u16,
        api_version: 0,
        correlation_id: 7,
        client_id: "big".into(),
    }
    .encode(&mut header);
    big.send_raw(&header);
    let (response, _) = big.receive().expect("an error response before closing");
    assert_eq!(
        (response.correlation_id, response.error_code),
        (7, ErrorCode::REQUEST_TOO_LARGE)
    );
    assert!(big.receive().is_none(), "the connection is closed");

    // Garbage that cannot be a header: disconnected.
    let mut garbage = Raw::connect(&broker.address);
    garbage.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    assert!(garbage.receive().is_none(), "garbage closes the connection");
    // A frame cut short by a peer that vanishes.
    let mut vanishing = Raw::connect(&broker.address);
    vanishing.send_raw(&[0, 0, 1, 0, 0, 1]);
    drop(vanishing);

    // The broker still serves, and the good data is intact.
    let mut fresh = Raw::connect(&broker.address);
    let fetch = FetchRequest {
        replica_id: None,
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: "good".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                current_leader_epoch: None,
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: None,
            }],
        }],
    };
    let ResponseBody::Fetch(response) = fresh.call(RequestBody::Fetch(fetch)) else {
        panic!("wrong response type")
    };
    let records = &response.topics[0].partitions[0].records;
    let batches: Vec<_> = rill_protocol::batch::batches(records.clone())
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(batches.len(), 2);
    batches.iter().for_each(|b| b.validate().unwrap());
    assert_eq!(batches[0].record_count() + batches[1].record_count(), 5);
    broker.wait_for_line("request frame too large", Duration::from_secs(10));
    broker.wait_for_line("undecodable request", Duration::from_secs(10));
}

fn heartbeat(
    raw: &mut Raw,
    group_id: &str,
    member_id: &str,
    epoch: i32,
    assignor: Option<&str>,
) -> ConsumerGroupHeartbeatResponse {
    let request = ConsumerGroupHeartbeatRequest {
        group_id: group_id.into(),
        member_id: member_id.into(),
        member_epoch: epoch,
        instance_id: None,
        subscribed_topics: Some(vec!["good".into()]),
        owned: vec![],
        session_timeout_ms: 10_000,
        assignor: assignor.map(String::from),
    };
    let ResponseBody::ConsumerGroupHeartbeat(response) =
        raw.call(RequestBody::ConsumerGroupHeartbeat(request))
    else {
        panic!("wrong response type")
    };
    response
}

fn commit(
    raw: &mut Raw,
    group_id: &str,
    member_id: &str,
    epoch: i32,
    topic: &str,
    partition: u32,
) -> (ErrorCode, Option<ErrorCode>) {
    let request = OffsetCommitRequest {
        group_id: group_id.into(),
        member_id: member_id.into(),
        member_epoch: epoch,
        topics: vec![OffsetCommitTopic {
            name: topic.into(),
            partitions: vec![OffsetCommitPartition {
                partition,
                offset: 1,
                metadata: None,
            }],
        }],
    };
    let ResponseBody::OffsetCommit(response) = raw.call(RequestBody::OffsetCommit(request)) else {
        panic!("wrong response type")
    };
    (
        response.error_code,
        response.topics.first().map(|t| t.partitions[0].error_code),
    )
}

#[test]
fn bad_group_requests_get_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let mut raw = Raw::connect(&broker.address);
    common::eventually(
        Duration::from_secs(30),
        "the offsets topic to exist",
        || {
            raw.send(
                ApiKey::FindCoordinator as u16,
                0,
                &encode_to_bytes(&FindCoordinatorRequest {
                    group_id: "g".into(),
                }),
            );
            let (_, body) = raw.receive().expect("a response");
            matches!(ResponseBody::decode(ApiKey::FindCoordinator as u16, 0, body), Ok(ResponseBody::FindCoordinator(r)) if r.error_code == ErrorCode::NONE)
        },
    );
    assert_eq!(create(&mut raw, "good", 2, 1, vec![]), ErrorCode::NONE);

    let long = "x".repeat(256);
    assert_eq!(
        heartbeat(&mut raw, &long, "", 0, None).error_code,
        ErrorCode::INVALID_GROUP_ID
    );
    assert_eq!(
        heartbeat(&mut raw, "", "", 0, None).error_code,
        ErrorCode::INVALID_GROUP_ID
    );
    assert_eq!(
        heartbeat(&mut raw, "g", &long, 3, None).error_code,
        ErrorCode::INVALID_REQUEST,
        "member id over the limit"
    );
    assert_eq!(
        heartbeat(&mut raw, "g", "", 0, Some("magic")).error_code,
        ErrorCode::UNSUPPORTED_ASSIGNOR
    );
    assert_eq!(
        heartbeat(&mut raw, "g", "nobody", 4, None).error_code,
        ErrorCode::UNKNOWN_MEMBER_ID
    );

    let joined = heartbeat(&mut raw, "g", "", 0, None);
    assert_eq!(joined.error_code, ErrorCode::NONE);
    let member = heartbeat(&mut raw, "g", &joined.member_id, joined.member_epoch, None);
    assert_eq!(member.error_code, ErrorCode::NONE);
    assert_eq!(
        member
            .assignment
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        2
    );
    assert_eq!(
        heartbeat(
            &mut raw,
            "g",
            &joined.member_id,
            member.member_epoch + 5,
            None
        )
        .error_code,
        ErrorCode::FENCED_MEMBER_EPOCH
    );

    // Commits: a partition that does not exist, a stale member, an admin commit to a live group.
    assert_eq!(
        commit(
            &mut raw,
            "g",
            &member.member_id,
            member.member_epoch,
            "good",
            0
        ),
        (ErrorCode::NONE, Some(ErrorCode::NONE))
    );
    assert_eq!(
        commit(
            &mut raw,
            "g",
            &member.member_id,
            member.member_epoch,
            "good",
            9
        )
        .1,
        Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(
        commit(
            &mut raw,
            "g",
            &member.member_id,
            member.member_epoch,
            "nope",
            0
        )
        .1,
        Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(
        commit(
            &mut raw,
            "g",
            &member.member_id,
            member.member_epoch - 1,
            "good",
            0
        )
        .1,
        Some(ErrorCode::FENCED_MEMBER_EPOCH)
    );
    assert_eq!(
        commit(&mut raw, "g", "ghost", 1, "good", 0).1,
        Some(ErrorCode::UNKNOWN_MEMBER_ID)
    );
    assert_eq!(
        commit(&mut raw, "g", "", -1, "good", 0).1,
        Some(ErrorCode::NON_EMPTY_GROUP)
    );

    let ResponseBody::DescribeGroups(described) =
        raw.call(RequestBody::DescribeGroups(DescribeGroupsRequest {
            group_ids: vec!["g".into(), "unknown".into()],
        }))
    else {
        panic!("wrong response type")
    };
    assert_eq!(described.groups[0].error_code, ErrorCode::NONE);
    assert_eq!(
        described.groups[1].error_code,
        ErrorCode::GROUP_ID_NOT_FOUND
    );
    let ResponseBody::DeleteGroups(deleted) =
        raw.call(RequestBody::DeleteGroups(DeleteGroupsRequest {
            group_ids: vec!["g".into(), "unknown".into()],
        }))
    else {
        panic!("wrong response type")
    };
    assert_eq!(deleted.results[0].error_code, ErrorCode::NON_EMPTY_GROUP);
    assert_eq!(deleted.results[1].error_code, ErrorCode::GROUP_ID_NOT_FOUND);
}

/// Decompression bombs (a few KiB that inflate far past `max_batch_decompressed_bytes`) are
/// refused with MESSAGE_TOO_LARGE and a message naming the limit, for every codec; so is a
/// snappy block that merely claims a huge length. Real compressed batches are accepted.
#[test]
fn decompression_bombs_are_refused_for_every_codec() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &["--max-batch-decompressed-bytes", "1048576"]);
    let client_runtime = tokio::runtime::Runtime::new().unwrap();
    client_runtime.block_on(async {
        let client = common::client(&broker.address).await;
        rill_client::Admin::new(client)
            .create_topic(rill_client::NewTopic::new("bombs", 1))
            .await
            .unwrap();
    });
    let mut raw = Raw::connect(&broker.address);
    let zeros = vec![0u8; 4 << 20];
    for codec in Compression::ALL {
        let bomb = compressed_batch(codec, 1, &zeros);
        let (code, message) = produce_outcome(&mut raw, "bombs", bomb.clone());
        if codec == Compression::None {
            // 4 MiB uncompressed is over max_batch_bytes, checked first.
            assert_eq!(code, ErrorCode::MESSAGE_TOO_LARGE);
            continue;
        }
        assert!(bomb.len() < 1 << 20, "{codec}: a {} byte bomb", bomb.len());
        assert_eq!(code, ErrorCode::MESSAGE_TOO_LARGE, "{codec}: {message:?}");
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("max_batch_decompressed_bytes")),
            "{codec}: {message:?}"
        );
        let fine = compressed_batch(codec, 100, b"a value that compresses");
        assert_eq!(
            produce_code(&mut raw, "bombs", fine),
            ErrorCode::NONE,
            "{codec}"
        );
    }
    // A raw snappy block whose header claims 2^32 - 1 bytes: refused before allocating.
    let mut liar = compressed_batch(Compression::Snappy, 1, b"x").to_vec();
    liar.truncate(61);
    liar.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
    let length = (liar.len() - 12) as i32;
    liar[8..12].copy_from_slice(&length.to_be_bytes());
    assert_eq!(
        produce_code(&mut raw, "bombs", with_crc(liar)),
        ErrorCode::MESSAGE_TOO_LARGE
    );
}
