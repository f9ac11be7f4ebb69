//! Feeds arbitrary bytes to both frame decoders and every body decoder: any outcome but a
//! panic, a hang or an allocation beyond the frame limit is a bug. See docs/PROTOCOL.md, "Fuzzing".
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rill_protocol::api::{RequestBody, ResponseBody};
use rill_protocol::frame::{RequestCodec, ResponseCodec};
use tokio_util::codec::Decoder;

const MAX_FRAME_BYTES: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut input = BytesMut::from(data);
    let mut codec = RequestCodec::new(MAX_FRAME_BYTES);
    while let Ok(Some(frame)) = codec.decode(&mut input) {
        let _ = RequestBody::decode(frame.header.api_key, frame.header.api_version, frame.body);
    }
    assert!(input.capacity() <= MAX_FRAME_BYTES + 4 + data.len());

    let mut input = BytesMut::from(data);
    let mut codec = ResponseCodec::new(MAX_FRAME_BYTES);
    while let Ok(Some(frame)) = codec.decode(&mut input) {
        // The first body byte picks which response type to try, so every decoder gets coverage.
        let key = frame.body.first().map_or(0, |b| u16::from(*b % 8));
        let _ = ResponseBody::decode(key, 0, frame.body.slice(frame.body.len().min(1)..));
    }

    if let Some((&key, body)) = data.split_first() {
        let _ = RequestBody::decode(u16::from(key % 8), 0, Bytes::copy_from_slice(body));
    }
});
