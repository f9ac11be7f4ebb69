//! Decoders never allocate by a length read from the input: whatever bytes arrive, the largest
//! single allocation while decoding stays proportional to the input size, not to counts or lengths
//! the input declares. Measured with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::api::{ApiKey, RequestBody, ResponseBody};
use rill_protocol::batch::batches;
use tokio_util::codec::Decoder;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test, so no other test thread allocates while the counter is read (it is process-wide).
#[test]
fn decoders_allocate_in_proportion_to_their_input() {
    frame_decoder_does_not_reserve_a_declared_length_over_the_limit();
    body_decoders_allocate_in_proportion_to_the_input();
    batch_reader_allocates_in_proportion_to_the_input();
}

/// Largest allocation made by `f`.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    f();
    LARGEST.load(Ordering::Relaxed)
}

/// Bodies that declare enormous counts and lengths at every position a decoder reads one.
fn hostile_inputs() -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in [4usize, 16, 64, 256, 1024] {
        for _ in 0..40 {
            let mut body = Vec::with_capacity(len);
            while body.len() < len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly 0xff and small values: huge u32 counts, present option tags, short strings.
                body.push(match seed % 4 {
                    0 | 1 => 0xff,
                    2 => 1,
                    _ => (seed >> 8) as u8,
                });
            }
            inputs.push(body);
        }
    }
    inputs
}

fn body_decoders_allocate_in_proportion_to_the_input() {
    for input in hostile_inputs() {
        for key in ApiKey::ALL {
            let body = Bytes::from(input.clone());
            let largest = largest_allocation(|| {
                let _ = RequestBody::decode(key as u16, 0, body.clone());
                let _ = ResponseBody::decode(key as u16, 0, body);
            });
            // The biggest decoded element is well under 256 bytes; arrays grow by doubling.
            assert!(
                largest <= 512 * input.len() + 4096,
                "{key:?}: {largest}-byte allocation for a {}-byte body",
                input.len()
            );
        }
    }
}

fn frame_decoder_does_not_reserve_a_declared_length_over_the_limit() {
    let mut input = BytesMut::new();
    input.put_u32(u32::MAX);
    input.put_slice(&[0; 8]);
    let largest = largest_allocation(|| {
        let _ = rill_protocol::frame::RequestCodec::new(1 << 20).decode(&mut input);
    });
    assert!(largest < 1024, "{largest}");
}

fn batch_reader_allocates_in_proportion_to_the_input() {
    for input in hostile_inputs() {
        let bytes = Bytes::from(input.clone());
        let largest = largest_allocation(|| {
            for batch in batches(bytes) {
                let Ok(batch) = batch else { break };
                let _ = batch.validate();
                if let Ok(records) = batch.records() {
                    records.take_while(Result::is_ok).for_each(drop);
                }
            }
        });
        assert!(
            largest <= 64 * input.len() + 4096,
            "{largest}-byte allocation for {} bytes",
            input.len()
        );
    }
}
