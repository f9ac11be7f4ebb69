//! Primitive encoders and decoders: the building blocks of every request and response body.
//!
//! All integers are big-endian. Strings are a `u16` byte length then UTF-8; byte strings are a
//! `u32` length then the bytes (decoded as zero-copy slices of the input `Bytes`); arrays are a
//! `u32` element count then the elements; `Option<T>` is a `u8` tag (0 absent, 1 present) then
//! the value; `bool` is a `u8` that must be 0 or 1.
//!
//! Invariant: decoding never allocates by a length read from the input before checking it against
//! the bytes actually remaining, so a hostile length costs an error, not memory.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use rill_protocol::wire::Wire;
//! let mut buf = BytesMut::new();
//! "topic".to_string().encode(&mut buf);
//! 7u32.encode(&mut buf);
//! let mut input: Bytes = buf.freeze();
//! assert_eq!(String::decode(&mut input).unwrap(), "topic");
//! assert_eq!(u32::decode(&mut input).unwrap(), 7);
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Most elements any array in a body may declare; a bound on decode work independent of frame size.
pub const ARRAY_ELEMENTS_MAX: usize = 1 << 20;

/// A type with a wire encoding.
pub trait Wire: Sized {
    /// Appends the encoding of `self` to `buf`.
    fn encode(&self, buf: &mut BytesMut);
    /// Decodes a value from the front of `buf`, advancing it.
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError>;
    /// Appends the encoding of `self` to `out`, sharing large byte strings instead of copying
    /// them (see [`Chunks`]). The chunks' concatenation equals [`Wire::encode`]'s output.
    fn encode_chunks(&self, out: &mut Chunks) {
        self.encode(&mut out.buf);
    }
}

/// An encoding in pieces, for a vectored write: fields are copied into a buffer, but byte
/// strings of at least [`Chunks::SHARE_BYTES_MIN`] (record batches) become chunks of their own
/// that share the caller's memory. A producer's batch or a fetched segment slice then goes to
/// the socket without being copied into a frame buffer first.
#[derive(Debug, Default)]
pub struct Chunks {
    buf: BytesMut,
    chunks: Vec<Bytes>,
}

impl Chunks {
    /// Byte strings shorter than this are copied: below it a copy costs less than another
    /// slice in the write.
    pub const SHARE_BYTES_MIN: usize = 4096;

    /// The buffer small fields are encoded into.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends `bytes`: shared as a chunk of its own when large, copied when small.
    pub fn put_bytes(&mut self, bytes: &Bytes) {
        if bytes.len() < Self::SHARE_BYTES_MIN {
            self.buf.put_slice(bytes);
            return;
        }
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.split().freeze());
        }
        self.chunks.push(bytes.clone());
    }

    /// The chunks, in order; empty for an empty encoding.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.freeze());
        }
        self.chunks
    }
}

/// Fails with [`ProtocolError::Truncated`] unless `buf` holds at least `needed` bytes.
pub fn ensure(buf: &Bytes, needed: usize, what: &'static str) -> Result<(), ProtocolError> {
    if buf.remaining() < needed {
        return Err(ProtocolError::Truncated {
            what,
            needed: needed - buf.remaining(),
        });
    }
    Ok(())
}

macro_rules! wire_int {
    ($($ty:ty => $put:ident, $get:ident;)*) => {$(
        impl Wire for $ty {
            fn encode(&self, buf: &mut BytesMut) {
                buf.$put(*self);
            }
            fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
                ensure(buf, std::mem::size_of::<$ty>(), stringify!($ty))?;
                Ok(buf.$get())
            }
        }
    )*};
}

wire_int! {
    u8 => put_u8, get_u8;
    i8 => put_i8, get_i8;
    u16 => put_u16, get_u16;
    i16 => put_i16, get_i16;
    u32 => put_u32, get_u32;
    i32 => put_i32, get_i32;
    u64 => put_u64, get_u64;
    i64 => put_i64, get_i64;
}

impl Wire for bool {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(*self));
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        match u8::decode(buf)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ProtocolError::invalid(
                "bool",
                format!("byte {other} is neither 0 nor 1"),
            )),
        }
    }
}

impl Wire for String {
    /// Strings longer than `u16::MAX` bytes cannot be encoded; callers validate lengths first
    /// (names are limited far below that). Encoding truncates at a char boundary as a last resort
    /// so that the frame stays well-formed.
    fn encode(&self, buf: &mut BytesMut) {
        let mut end = self.len().min(u16::MAX as usize);
        while !self.is_char_boundary(end) {
            end -= 1;
        }
        debug_assert_eq!(
            end,
            self.len(),
            "string over 65535 bytes truncated on the wire"
        );
        buf.put_u16(end as u16);
        buf.put_slice(&self.as_bytes()[..end]);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        let len = u16::decode(buf)? as usize;
        ensure(buf, len, "string")?;
        let bytes = buf.split_to(len);
        String::from_utf8(bytes.to_vec())
            .map_err(|e| ProtocolError::invalid("string", format!("not UTF-8: {e}")))
    }
}

impl Wire for Bytes {
    fn encode(&self, buf: &mut BytesMut) {
        debug_assert!(self.len() <= u32::MAX as usize);
        buf.put_u32(self.len() as u32);
        buf.put_slice(self);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        let len = u32::decode(buf)? as usize;
        ensure(buf, len, "bytes")?;
        Ok(buf.split_to(len))
    }
    fn encode_chunks(&self, out: &mut Chunks) {
        debug_assert!(self.len() <= u32::MAX as usize);
        out.buf.put_u32(self.len() as u32);
        out.put_bytes(self);
    }
}

impl<T: Wire> Wire for Option<T> {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            None => buf.put_u8(0),
            Some(value) => {
                buf.put_u8(1);
                value.encode(buf);
            }
        }
    }
    fn encode_chunks(&self, out: &mut Chunks) {
        match self {
            None => out.buf.put_u8(0),
            Some(value) => {
                out.buf.put_u8(1);
                value.encode_chunks(out);
            }
        }
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        match u8::decode(buf)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(buf)?)),
            other => Err(ProtocolError::invalid(
                "option tag",
                format!("tag {other} is neither 0 nor 1"),
            )),
        }
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn encode(&self, buf: &mut BytesMut) {
        debug_assert!(self.len() <= ARRAY_ELEMENTS_MAX);
        buf.put_u32(self.len() as u32);
        for item in self {
            item.encode(buf);
        }
    }
    fn encode_chunks(&self, out: &mut Chunks) {
        debug_assert!(self.len() <= ARRAY_ELEMENTS_MAX);
        out.buf.put_u32(self.len() as u32);
        for item in self {
            item.encode_chunks(out);
        }
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        let count = u32::decode(buf)? as usize;
        // Every element encodes to at least one byte, so a count above the remaining bytes is a lie.
        if count > buf.remaining() || count > ARRAY_ELEMENTS_MAX {
            return Err(ProtocolError::invalid(
                "array",
                format!("declares {count} elements but only {} bytes remain (limit {ARRAY_ELEMENTS_MAX})", buf.remaining()),
            ));
        }
        // Grow as elements actually decode instead of trusting the count for the reservation.
        let mut items = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            items.push(T::decode(buf)?);
        }
        Ok(items)
    }
}

/// Decodes a whole body: `T` must consume every byte.
pub fn decode_exact<T: Wire>(mut buf: Bytes, what: &'static str) -> Result<T, ProtocolError> {
    let value = T::decode(&mut buf)?;
    if buf.has_remaining() {
        return Err(ProtocolError::TrailingBytes {
            what,
            trailing: buf.remaining(),
        });
    }
    Ok(value)
}

/// Encodes a value into a fresh buffer.
pub fn encode_to_bytes<T: Wire>(value: &T) -> Bytes {
    let mut buf = BytesMut::new();
    value.encode(&mut buf);
    buf.freeze()
}

/// Declares a struct whose wire encoding is its fields in order, and derives [`Wire`] for it.
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }

        impl $crate::wire::Wire for $name {
            #[allow(unused_variables)]
            fn encode(&self, buf: &mut bytes::BytesMut) {
                $($crate::wire::Wire::encode(&self.$field, buf);)*
            }
            #[allow(unused_variables)]
            fn encode_chunks(&self, out: &mut $crate::wire::Chunks) {
                $($crate::wire::Wire::encode_chunks(&self.$field, out);)*
            }
            #[allow(unused_variables)]
            fn decode(buf: &mut bytes::Bytes) -> Result<Self, $crate::error::ProtocolError> {
                Ok(Self { $($field: <$ty as $crate::wire::Wire>::decode(buf)?),* })
            }
        }
    };
}
pub(crate) use wire_struct;

// ---- Zig-zag varints, as in Kafka's record format (used inside record batches). ----

/// Appends `value` as a zig-zag varint (at most 5 bytes).
#[inline]
pub fn put_varint(buf: &mut impl BufMut, value: i32) {
    put_varlong(buf, i64::from(value));
}

/// Appends `value` as a zig-zag varlong (at most 10 bytes).
#[inline]
pub fn put_varlong(buf: &mut impl BufMut, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Bytes that `put_varlong(value)` writes.
#[inline]
pub fn varlong_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - v.leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

/// Reads a zig-zag varint from the front of `buf`; overlong or truncated encodings are errors.
pub fn get_varint(buf: &mut &[u8]) -> Result<i32, ProtocolError> {
    let v = get_zigzag(buf, 5, "varint")?;
    i32::try_from(v).map_err(|_| ProtocolError::invalid("varint", "value does not fit in 32 bits"))
}

/// Reads a zig-zag varlong from the front of `buf`.
pub fn get_varlong(buf: &mut &[u8]) -> Result<i64, ProtocolError> {
    get_zigzag(buf, 10, "varlong")
}

fn get_zigzag(buf: &mut &[u8], max_bytes: usize, what: &'static str) -> Result<i64, ProtocolError> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(ProtocolError::Truncated { what, needed: 1 });
        };
        *buf = rest;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err(ProtocolError::invalid(
        what,
        format!("longer than {max_bytes} bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut slice = &buf[..];
            prop_assert_eq!(get_varlong(&mut slice).unwrap(), v);
            prop_assert!(slice.is_empty());
        }

        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut slice = &buf[..];
            prop_assert_eq!(get_varint(&mut slice).unwrap(), v);
        }

        #[test]
        fn varint_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut slice = &bytes[..];
            let _ = get_varint(&mut slice);
            let mut slice = &bytes[..];
            let _ = get_varlong(&mut slice);
        }

        #[test]
        fn primitives_round_trip(a in any::<u64>(), b in any::<i16>(), s in ".{0,40}", v in proptest::collection::vec(any::<u32>(), 0..8), o in any::<Option<i32>>(), flag in any::<bool>()) {
            let mut buf = BytesMut::new();
            a.encode(&mut buf); b.encode(&mut buf); s.to_string().encode(&mut buf); v.encode(&mut buf); o.encode(&mut buf); flag.encode(&mut buf);
            let mut input = buf.freeze();
            prop_assert_eq!(u64::decode(&mut input).unwrap(), a);
            prop_assert_eq!(i16::decode(&mut input).unwrap(), b);
            prop_assert_eq!(String::decode(&mut input).unwrap(), s);
            prop_assert_eq!(Vec::<u32>::decode(&mut input).unwrap(), v);
            prop_assert_eq!(Option::<i32>::decode(&mut input).unwrap(), o);
            prop_assert_eq!(bool::decode(&mut input).unwrap(), flag);
            prop_assert!(input.is_empty());
        }
    }

    #[test]
    fn array_count_larger_than_input_is_rejected_without_allocating() {
        let mut input = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert!(matches!(
            Vec::<u64>::decode(&mut input),
            Err(ProtocolError::Invalid { .. })
        ));
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let bytes = [0xffu8; 11];
        let mut slice = &bytes[..];
        assert!(get_varlong(&mut slice).is_err());
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x7f];
        let mut slice = &bytes[..];
        assert!(
            get_varint(&mut slice).is_err(),
            "33+ bit value must not fit an i32"
        );
    }
}
