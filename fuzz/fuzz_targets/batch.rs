//! Feeds arbitrary bytes to the record batch reader: batch iteration, validation (CRC and record
//! structure) and record iteration must return errors, never panic. The CRC is repaired before
//! validation half of the time so that the record parser behind it is reached.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rill_protocol::batch::{batches, CRC_OFFSET, CRC_START};

fuzz_target!(|data: &[u8]| {
    let mut bytes = BytesMut::from(data);
    if data.first().is_some_and(|b| b & 1 == 1) && bytes.len() > CRC_START {
        let crc = rill_protocol::batch::checksum(&bytes[CRC_START..]);
        bytes[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    }
    for batch in batches(Bytes::from(bytes)) {
        let Ok(batch) = batch else { break };
        let _ = batch.validate();
        if let Ok(records) = batch.records() {
            for record in records {
                if record.is_err() {
                    break;
                }
            }
        }
    }
});

