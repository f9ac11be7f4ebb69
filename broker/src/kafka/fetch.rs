//! The Kafka Fetch response, encoded without copying records: every small field goes into
//! buffers (each partition's header through `kafka-protocol`'s own encoder), and each
//! partition's records are the `Bytes` slice of the segment mapping that the fetch operation
//! returned, sent with the connection's vectored write as the native fetch is.
//!
//! Served versions are 4-12. A partition is encoded by `kafka-protocol` with null records,
//! which at these versions are its last bytes (v4-11: `i32 -1`; v12: `uvarint 0` then the empty
//! tagged-field section `0`); those bytes are checked, cut and replaced by the records' length
//! and the records themselves.

use anyhow::{bail, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchResponse;
use kafka_protocol::protocol::Encodable;

/// `response` (whose partitions' `records` are all `None`) at `version`, with `records[i]`
/// as the records of the i-th partition in order (topics, then their partitions).
pub fn encode_chunks(
    response: &FetchResponse,
    records: &[Bytes],
    version: i16,
) -> Result<Vec<Bytes>> {
    if !(4..=12).contains(&version) {
        bail!("Fetch version {version} is not encoded here");
    }
    let flexible = version >= 12;
    let mut chunks = Vec::with_capacity(2 * records.len() + 1);
    let mut buf = BytesMut::with_capacity(64 + 64 * records.len());
    buf.put_i32(response.throttle_time_ms);
    if version >= 7 {
        buf.put_i16(response.error_code);
        buf.put_i32(response.session_id);
    }
    // Arrays and byte strings: `i32` lengths, or (flexible versions) `uvarint` length + 1.
    let length = |buf: &mut BytesMut, n: usize| {
        if flexible {
            put_uvarint(buf, n as u32 + 1);
        } else {
            buf.put_i32(n as i32);
        }
    };
    length(&mut buf, response.responses.len());
    let mut next = records.iter();
    for topic in &response.responses {
        let name = topic.topic.0.as_str().as_bytes();
        if flexible {
            put_uvarint(&mut buf, name.len() as u32 + 1);
        } else {
            buf.put_i16(name.len() as i16);
        }
        buf.put_slice(name);
        length(&mut buf, topic.partitions.len());
        for partition in &topic.partitions {
            if partition.records.is_some() {
                bail!("records are passed on their own");
            }
            partition.encode(&mut buf, version)?;
            let null: &[u8] = if flexible { &[0, 0] } else { &[0xff; 4] };
            if !buf.ends_with(null) {
                bail!("a Fetch partition at v{version} does not end with its records");
            }
            buf.truncate(buf.len() - null.len());
            let Some(records) = next.next() else {
                bail!("fewer records than partitions");
            };
            length(&mut buf, records.len());
            chunks.push(buf.split().freeze());
            if !records.is_empty() {
                chunks.push(records.clone());
            }
            if flexible {
                buf.put_u8(0); // the partition's tagged fields: none
            }
        }
        if flexible {
            buf.put_u8(0); // the topic's tagged fields
        }
    }
    if flexible {
        buf.put_u8(0); // the response's tagged fields
    }
    chunks.push(buf.freeze());
    Ok(chunks)
}

/// Kafka's unsigned varint (protobuf's base-128, low bits first).
fn put_uvarint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response(with_records: bool) -> (FetchResponse, Vec<Bytes>) {
        let mut records = Vec::new();
        let topics = (0..2)
            .map(|t| {
                let partitions = (0..3)
                    .map(|p| {
                        let bytes = Bytes::from(vec![t as u8 * 10 + p as u8; (t * 3 + p) * 37]);
                        records.push(bytes.clone());
                        PartitionData::default()
                            .with_partition_index(p as i32)
                            .with_error_code(if p == 2 { 1 } else { 0 })
                            .with_high_watermark(1000 + p as i64)
                            .with_last_stable_offset(1000 + p as i64)
                            .with_log_start_offset(7)
                            .with_aborted_transactions(Some(Vec::new()))
                            .with_preferred_read_replica(BrokerId(-1))
                            .with_records(with_records.then_some(bytes))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                    .with_partitions(partitions)
            })
            .collect();
        (FetchResponse::default().with_responses(topics), records)
    }

    #[test]
    fn chunks_decode_as_the_crate_encodes_at_every_served_version() {
        for version in 4..=12 {
            let (expected, _) = response(true);
            let (bare, records) = response(false);
            let chunks = encode_chunks(&bare, &records, version).unwrap();
            let mut joined = BytesMut::new();
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            let mut copied = BytesMut::new();
            expected.encode(&mut copied, version).unwrap();
            assert_eq!(joined, copied, "v{version}: the bytes the crate encodes");
            // The records themselves were not copied.
            assert!(chunks.iter().any(|c| c.as_ptr() == records[5].as_ptr()));
        }
    }
}
