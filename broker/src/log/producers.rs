//! Idempotent producers' state in one partition: for each producer id, its epoch and the
//! sequence numbers and offsets of its last [`BATCHES_KEPT`] batches (Kafka's
//! `ProducerStateManager` is the model).
//!
//! A leader checks every batch of an idempotent producer (producer id >= 0) against it before
//! writing: a batch it already wrote is answered with its original offsets and not written
//! again; a gap in sequences is `OUT_OF_ORDER_SEQUENCE`; an older epoch `INVALID_PRODUCER_EPOCH`;
//! a producer it does not know starting past sequence 0 `UNKNOWN_PRODUCER_ID`. The batches carry
//! everything the state is made of, so it is rebuilt from the log itself (a follower that becomes
//! leader deduplicates retries of what the old leader wrote); `<offset>.producers` snapshots,
//! written at every segment roll and at close, keep a restart from rescanning the whole log.
//!
//! Bounded: a producer unseen for `producer_id_expiration_ms` is forgotten; at most
//! `max_producers` are tracked per partition (past that, the least recently active is
//! forgotten, and its retries are no longer deduplicated).
//!
//! Snapshot file: `RPS1` | count u32 | count x (producer_id i64 | epoch i16 | last_append_ms i64 |
//! n u8 | n x (first_seq i32 | last_seq i32 | base_offset u64 | last_offset u64)) | CRC-32C u32
//! of everything before it. Big-endian.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rill_protocol::batch::RecordBatch;
use rill_protocol::ErrorCode;

use crate::error::{Error, IoContext, Result};

/// Batches remembered per producer: a producer keeps at most this many in flight (the client
/// holds to the same limit).
pub const BATCHES_KEPT: usize = rill_protocol::batch::IDEMPOTENT_MAX_IN_FLIGHT;
const MAGIC: &[u8; 4] = b"RPS1";
/// File name suffix of producer state snapshots.
pub const SNAPSHOT_SUFFIX: &str = "producers";

/// One batch of a producer: its sequence range and where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSequence {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// What is known of one producer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchSequence>,
    /// Wall time of its last batch (ms): what expiration counts from.
    pub last_append_ms: i64,
}

/// The producer fields of a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl ProducerBatch {
    /// The producer fields of `batch`, if an idempotent producer wrote it.
    pub fn of(batch: &RecordBatch) -> Option<ProducerBatch> {
        if batch.producer_id() < 0 {
            return None;
        }
        let first_seq = batch.base_sequence();
        Some(ProducerBatch {
            producer_id: batch.producer_id(),
            epoch: batch.producer_epoch(),
            first_seq,
            last_seq: increment(first_seq, batch.last_offset_delta()),
        })
    }
}

/// `seq + delta` wrapping at `i32::MAX` to 0, as Kafka's sequences do.
pub fn increment(seq: i32, delta: i32) -> i32 {
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

/// The verdict on a batch before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Append,
    /// Already written at these offsets: answer with them, write nothing.
    Duplicate { base_offset: u64, last_offset: u64 },
}

fn refuse(code: ErrorCode, message: String) -> Error {
    Error::ProducerState { code, message }
}

/// The state of every producer of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// The last offset of each producer's newest batch: compaction keeps those batches whole,
    /// so the state can always be rebuilt from the log.
    pub fn last_offsets(&self) -> HashMap<i64, u64> {
        self.producers
            .iter()
            .filter_map(|(id, entry)| Some((*id, entry.batches.back()?.last_offset)))
            .collect()
    }

    /// Whether `batch` may be written (see the module docs).
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            if batch.first_seq == 0 {
                return Ok(Verdict::Append);
            }
            return Err(refuse(
                ErrorCode::UNKNOWN_PRODUCER_ID,
                format!(
                    "producer {} is not known to this partition (expired, or its batches were deleted) and its batch starts at sequence {}",
                    batch.producer_id, batch.first_seq
                ),
            ));
        };
        if batch.epoch < entry.epoch {
            return Err(refuse(
                ErrorCode::INVALID_PRODUCER_EPOCH,
                format!(
                    "producer {} epoch {} is older than its current epoch {}",
                    batch.producer_id, batch.epoch, entry.epoch
                ),
            ));
        }
        if batch.epoch > entry.epoch {
            if batch.first_seq == 0 {
                return Ok(Verdict::Append);
            }
            return Err(refuse(
                ErrorCode::OUT_OF_ORDER_SEQUENCE,
                format!(
                    "producer {} starts epoch {} at sequence {}, not 0",
                    batch.producer_id, batch.epoch, batch.first_seq
                ),
            ));
        }
        if let Some(written) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
        {
            return Ok(Verdict::Duplicate {
                base_offset: written.base_offset,
                last_offset: written.last_offset,
            });
        }
        let expected = entry.batches.back().map_or(0, |b| increment(b.last_seq, 1));
        if batch.first_seq != expected {
            return Err(refuse(
                ErrorCode::OUT_OF_ORDER_SEQUENCE,
                format!(
                    "producer {} sent sequence {} but this partition expects {expected}",
                    batch.producer_id, batch.first_seq
                ),
            ));
        }
        Ok(Verdict::Append)
    }

    /// Records a written batch. With `max_producers` tracked already, a new producer replaces
    /// the least recently active one.
    pub fn record(
        &mut self,
        batch: &ProducerBatch,
        base_offset: u64,
        last_offset: u64,
        now_ms: i64,
        max_producers: usize,
    ) {
        if !self.producers.contains_key(&batch.producer_id)
            && self.producers.len() >= max_producers.max(1)
        {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, e)| e.last_append_ms)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
                tracing::warn!(
                    forgotten = oldest,
                    max_producers,
                    "too many idempotent producers on one partition: forgot the least recently active (its retries are no longer deduplicated)"
                );
            }
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::new(),
                last_append_ms: now_ms,
            });
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchSequence {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            base_offset,
            last_offset,
        });
        while entry.batches.len() > BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
    }

    /// Forgets producers whose last batch is more than `expiration_ms` old; how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: u64) -> usize {
        let before = self.producers.len();
        let cutoff = now_ms.saturating_sub(i64::try_from(expiration_ms).unwrap_or(i64::MAX));
        self.producers.retain(|_, e| e.last_append_ms >= cutoff);
        before - self.producers.len()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.producers.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for id in ids {
            let e = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_append_ms.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot; `None` if it is not a valid one (then the log is scanned instead).
    fn decode(bytes: &[u8]) -> Option<ProducerStates> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return None;
        }
        let count = r.u32()? as usize;
        // Each entry takes at least 19 bytes: a bound that needs no trust in the count.
        if count > r.0.len() / 19 {
            return None;
        }
        let mut producers = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = r.u64()? as i64;
            let epoch = i16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let last_append_ms = r.u64()? as i64;
            let n = r.take(1)?[0] as usize;
            if n > BATCHES_KEPT {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchSequence {
                    first_seq: r.u32()? as i32,
                    last_seq: r.u32()? as i32,
                    base_offset: r.u64()?,
                    last_offset: r.u64()?,
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_append_ms,
                },
            );
        }
        r.0.is_empty().then_some(ProducerStates { producers })
    }

    /// Drops what lies at or past `offset` (the log was truncated there): batches past it, and
    /// producers left with none.
    pub fn truncate_from(&mut self, offset: u64) {
        self.producers.retain(|_, e| {
            e.batches.retain(|b| b.last_offset < offset);
            !e.batches.is_empty()
        });
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn snapshot_path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("{offset:020}.{SNAPSHOT_SUFFIX}"))
}

/// Offsets of the snapshots in `dir`, ascending.
pub fn list_snapshots(dir: &Path) -> Result<Vec<u64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir).context("list log directory", dir)? {
        let name = entry.context("list log directory", dir)?.file_name();
        if let Some(offset) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{SNAPSHOT_SUFFIX}")))
            .and_then(|n| n.parse::<u64>().ok())
        {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes the state as of `offset` (it covers every batch before it): write new, fsync if
/// `sync`, rename. Unsynced (a roll, which must not wait on the disk), a crash may leave the
/// file empty or torn: its CRC then fails and the next open falls back to an older snapshot.
pub fn write_snapshot(dir: &Path, offset: u64, states: &ProducerStates, sync: bool) -> Result<()> {
    let path = snapshot_path(dir, offset);
    let tmp = path.with_extension(format!("{SNAPSHOT_SUFFIX}.tmp"));
    let mut file = fs::File::create(&tmp).context("create producer snapshot", &tmp)?;
    file.write_all(&states.encode())
        .context("write producer snapshot", &tmp)?;
    if sync {
        file.sync_all().context("sync producer snapshot", &tmp)?;
    }
    fs::rename(&tmp, &path).context("rename producer snapshot", &path)
}

/// The newest valid snapshot at or before `offset`: (its offset, the state).
pub fn read_latest_snapshot(dir: &Path, offset: u64) -> Result<Option<(u64, ProducerStates)>> {
    for at in list_snapshots(dir)?.into_iter().rev() {
        if at > offset {
            continue;
        }
        match fs::read(snapshot_path(dir, at))
            .ok()
            .and_then(|b| ProducerStates::decode(&b))
        {
            Some(states) => return Ok(Some((at, states))),
            None => {
                tracing::warn!(dir = %dir.display(), offset = at, "ignoring a corrupt producer state snapshot (the log is scanned instead)");
            }
        }
    }
    Ok(None)
}

/// Deletes the snapshots for which `delete(offset)` holds.
pub fn delete_snapshots(dir: &Path, delete: impl Fn(u64) -> bool) -> Result<()> {
    for at in list_snapshots(dir)? {
        if delete(at) {
            let path = snapshot_path(dir, at);
            fs::remove_file(&path).context("delete producer snapshot", &path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: i64, epoch: i16, first: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: id,
            epoch,
            first_seq: first,
            last_seq: increment(first, count - 1),
        }
    }

    fn code(result: Result<Verdict>) -> ErrorCode {
        match result {
            Err(Error::ProducerState { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&batch(7, 0, 0, 10)).unwrap(), Verdict::Append);
        s.record(&batch(7, 0, 0, 10), 100, 109, 1, 10);
        s.record(&batch(7, 0, 10, 5), 110, 114, 1, 10);
        assert_eq!(
            s.check(&batch(7, 0, 0, 10)).unwrap(),
            Verdict::Duplicate {
                base_offset: 100,
                last_offset: 109
            }
        );
        assert_eq!(s.check(&batch(7, 0, 15, 1)).unwrap(), Verdict::Append);
        assert_eq!(
            code(s.check(&batch(7, 0, 16, 1))),
            ErrorCode::OUT_OF_ORDER_SEQUENCE
        );
        assert_eq!(
            code(s.check(&batch(8, 0, 3, 1))),
            ErrorCode::UNKNOWN_PRODUCER_ID
        );
        s.record(&batch(7, 1, 0, 1), 115, 115, 2, 10);
        assert_eq!(
            code(s.check(&batch(7, 0, 15, 1))),
            ErrorCode::INVALID_PRODUCER_EPOCH
        );
        assert_eq!(
            code(s.check(&batch(7, 2, 5, 1))),
            ErrorCode::OUT_OF_ORDER_SEQUENCE
        );
        assert_eq!(s.check(&batch(7, 2, 0, 1)).unwrap(), Verdict::Append);
        for i in 1..10 {
            s.record(&batch(7, 1, i, 1), 115 + i as u64, 115 + i as u64, 3, 10);
        }
        assert_eq!(s.get(7).unwrap().batches.len(), BATCHES_KEPT);
    }

    #[test]
    fn sequences_wrap_and_producers_expire_and_are_bounded() {
        assert_eq!(increment(i32::MAX, 1), 0);
        assert_eq!(increment(i32::MAX - 1, 3), 1);
        let mut s = ProducerStates::default();
        s.record(&batch(1, 0, i32::MAX - 1, 2), 0, 1, 1_000, 2);
        assert_eq!(s.check(&batch(1, 0, 0, 1)).unwrap(), Verdict::Append);
        s.record(&batch(2, 0, 0, 1), 2, 2, 2_000, 2);
        s.record(&batch(3, 0, 0, 1), 3, 3, 3_000, 2);
        assert!(s.get(1).is_none(), "the least recently active went");
        assert_eq!(s.expire(10_000, 7_500), 1);
        assert!(s.get(3).is_some() && s.get(2).is_none());
    }

    #[test]
    fn snapshots_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerStates::default();
        for id in 0..20 {
            s.record(
                &batch(id, 1, 0, 3),
                id as u64 * 3,
                id as u64 * 3 + 2,
                5,
                100,
            );
        }
        write_snapshot(dir.path(), 60, &s, true).unwrap();
        assert_eq!(
            read_latest_snapshot(dir.path(), 100).unwrap(),
            Some((60, s.clone()))
        );
        assert_eq!(read_latest_snapshot(dir.path(), 59).unwrap(), None);
        let path = snapshot_path(dir.path(), 60);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_latest_snapshot(dir.path(), 100).unwrap(), None);
        s.truncate_from(30);
        assert_eq!(s.len(), 10);
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = ProducerStates::decode(&bytes);
        }
    }
}
