//! Batch compression: the codecs of Kafka's v2 batches (attribute bits 0-2), with the framing
//! Kafka clients use, and decompression that never produces more than a caller's limit.
//!
//! | codec | framing |
//! | --- | --- |
//! | gzip (1) | a gzip stream (RFC 1952) |
//! | snappy (2) | written as one raw snappy block; read raw or in the xerial framing the Java client writes (`\x82SNAPPY\0`, then length-prefixed blocks) |
//! | lz4 (3) | an LZ4 frame with independent 64 KiB blocks (what Kafka's `KafkaLZ4BlockOutputStream` writes and reads) |
//! | zstd (4) | a zstd frame; windows over 2^`ZSTD_WINDOW_LOG_MAX` are refused |
//!
//! Only the records region (bytes 61..) is compressed; the batch header stays readable, so a
//! broker assigns offsets and checks CRCs without decompressing. A decompression bomb (a few
//! bytes that inflate to gigabytes) is stopped at the limit: output is produced in bounded
//! steps and the codec's own size claims are checked before anything is allocated by them.

use std::io::{Read, Write};

use crate::batch::Compression;
use crate::error::ProtocolError;

/// The default bound on a batch's decompressed records (brokers: `max_batch_decompressed_bytes`).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 32 << 20;

/// Largest zstd window accepted (2^23 = 8 MiB: Kafka clients' zstd level 3 uses 2^21 or less).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// zstd level Kafka's clients use by default.
const ZSTD_LEVEL: i32 = 3;
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\0";

fn codec_error(codec: Compression, e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Invalid {
        what: "compressed records",
        reason: format!("{codec:?}: {e}"),
    }
}

/// Compresses `data` with `codec` (`Compression::None` returns a copy).
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let fail = |e: std::io::Error| codec_error(codec, e);
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2 + 64),
                flate2::Compression::default(),
            );
            encoder.write_all(data).map_err(fail)?;
            encoder.finish().map_err(fail)
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .map_err(|e| codec_error(codec, e)),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(
                info,
                Vec::with_capacity(data.len() / 2 + 64),
            );
            encoder.write_all(data).map_err(fail)?;
            encoder.finish().map_err(|e| codec_error(codec, e))
        }
        Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(fail),
    }
}

/// Decompresses `data` (a batch's records region) written with `codec`; refuses, without
/// producing more than `limit` bytes, anything that would inflate past `limit`.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let fail = |e: std::io::Error| codec_error(codec, e);
    match codec {
        Compression::None => {
            check_limit(data.len(), limit)?;
            Ok(data.to_vec())
        }
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(data), limit, codec),
        Compression::Snappy if data.starts_with(XERIAL_MAGIC) => xerial(data, limit),
        Compression::Snappy => {
            let mut out = Vec::new();
            snappy_block(data, &mut out, limit)?;
            Ok(out)
        }
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), limit, codec),
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(data).map_err(fail)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(fail)?;
            read_bounded(decoder, limit, codec)
        }
    }
}

fn check_limit(size: usize, limit: usize) -> Result<(), ProtocolError> {
    if size > limit {
        return Err(ProtocolError::DecompressedTooLarge { limit });
    }
    Ok(())
}

/// Reads at most `limit + 1` bytes: one more than allowed proves the bomb.
fn read_bounded(
    reader: impl Read,
    limit: usize,
    codec: Compression,
) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| codec_error(codec, e))?;
    check_limit(out.len(), limit)?;
    Ok(out)
}

/// One raw snappy block appended to `out`; its declared length is checked before allocating.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
    let len = snap::raw::decompress_len(block).map_err(|e| codec_error(Compression::Snappy, e))?;
    check_limit(out.len().saturating_add(len), limit)?;
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| codec_error(Compression::Snappy, e))?;
    out.truncate(start + written);
    Ok(())
}

/// The Java client's snappy framing: 16-byte header, then `length i32 | raw snappy block`*.
fn xerial(data: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut rest = data
        .get(16..)
        .ok_or_else(|| codec_error(Compression::Snappy, "xerial header shorter than 16 bytes"))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| codec_error(Compression::Snappy, "truncated xerial block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(codec_error(
                Compression::Snappy,
                format!("xerial block of {len} bytes with {} left", tail.len()),
            ));
        }
        snappy_block(&tail[..len], &mut out, limit)?;
        rest = &tail[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn json_events(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend_from_slice(
                format!(
                    "{{\"user\":\"user-{}\",\"event\":\"click\",\"page\":\"/items/{}\",\"ts\":{}}}",
                    i % 97,
                    i % 13,
                    1_700_000_000_000u64 + i as u64
                )
                .as_bytes(),
            );
        }
        out
    }

    #[test]
    fn every_codec_round_trips() {
        let data = json_events(2000);
        for codec in CODECS {
            let compressed = compress(codec, &data).unwrap();
            if codec != Compression::None {
                assert!(
                    compressed.len() < data.len() / 2,
                    "{codec:?} compresses JSON"
                );
            }
            assert_eq!(
                decompress(codec, &compressed, data.len()).unwrap(),
                data,
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_bomb_is_stopped_at_the_limit_for_every_codec() {
        // 64 MiB of zeros compresses to a few KiB (zstd: a few bytes); the limit is 1 MiB.
        let zeros = vec![0u8; 64 << 20];
        for codec in CODECS {
            let bomb = compress(codec, &zeros).unwrap();
            assert_eq!(
                decompress(codec, &bomb, 1 << 20),
                Err(ProtocolError::DecompressedTooLarge { limit: 1 << 20 }),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn xerial_framed_snappy_is_read() {
        let data = json_events(500);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1u32.to_be_bytes());
        framed.extend_from_slice(&1u32.to_be_bytes());
        for chunk in data.chunks(4096) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        assert_eq!(
            decompress(Compression::Snappy, &framed, 1 << 20).unwrap(),
            data
        );
        assert!(decompress(Compression::Snappy, &framed[..framed.len() - 3], 1 << 20).is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(codec in 0usize..5, bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decompress(CODECS[codec], &bytes, 1 << 16);
        }
    }
}
