//! A small binary encoding for checkpointed state: little-endian integers and
//! length-prefixed byte strings, read back with bounds checks (a truncated
//! or corrupted file is an error, never a panic).

use crate::error::{EddyError, Result};

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    pub bytes: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn i128(&mut self, v: i128) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }

    /// An unsigned integer in 1 to 10 bytes (LEB128: 7 bits a byte, low
    /// bits first), for the many small lengths of sorted runs.
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.bytes.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
        self
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.bytes.extend_from_slice(v);
        self
    }

    /// Bytes as they are (no length prefix).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }

    /// A length-prefixed byte string written in place by `write`.
    pub fn prefixed(&mut self, write: impl FnOnce(&mut Self)) -> &mut Self {
        let at = self.bytes.len();
        self.u64(0);
        write(self);
        let len = (self.bytes.len() - at - 8) as u64;
        self.bytes[at..at + 8].copy_from_slice(&len.to_le_bytes());
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads values written by [`Encoder`].
#[derive(Debug)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.position >= self.bytes.len()
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.position
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .position
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                EddyError::Checkpoint(format!(
                    "state ends early: wanted {n} bytes at offset {} of {}",
                    self.position,
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }

    pub fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(EddyError::Checkpoint(format!(
            "a variable-length integer at offset {} runs past 64 bits",
            self.position
        )))
    }

    /// Bytes as they are, `n` of them.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        self.take(n)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .map_err(|_| EddyError::Checkpoint(format!("byte string of {len} bytes")))?;
        self.take(len)
    }
}

/// CRC-32 (IEEE 802.3, as zlib and gzip use), to detect corrupted files
/// (`crc32fast`: several GB/s, where a byte-at-a-time table made CRCs a
/// tenth of a large checkpoint's time).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut e = Encoder::new();
        e.u8(7).u64(42).i64(-3).bytes(b"abc").f64(1.5).i128(-9);
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            e.varint(v);
        }
        let bytes = e.finish();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.u64().unwrap(), 42);
        assert_eq!(d.i64().unwrap(), -3);
        assert_eq!(d.bytes().unwrap(), b"abc");
        assert_eq!(d.f64().unwrap(), 1.5);
        assert_eq!(d.i128().unwrap(), -9);
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(d.varint().unwrap(), v);
        }
        assert!(d.is_empty());
        assert!(Decoder::new(&[0xff; 11]).varint().is_err());
        let mut short = Decoder::new(&bytes[..10]);
        short.u8().unwrap();
        assert!(short.u64().is_ok());
        assert!(short.i64().is_err());
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
