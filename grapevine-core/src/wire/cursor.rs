//! Bounds-checked big-endian reading and writing over byte slices.
//!
//! Every read and write checks its length first and reports a shortfall as a
//! value: nothing here can panic, whatever the input.

/// Not enough bytes left to read a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    /// Bytes the field needed.
    pub(crate) needed: usize,
    /// Bytes that were left.
    pub(crate) available: usize,
}

/// A forward-only reader over untrusted bytes.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if n > self.buf.len() {
            return Err(Short {
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(*head)
            }
            None => Err(Short {
                needed: N,
                available: self.buf.len(),
            }),
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Short> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Short> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Short> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Short> {
        self.array().map(u64::from_be_bytes)
    }
}

/// A forward-only writer into a caller-provided buffer.
#[derive(Debug)]
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    pub(crate) fn new(buf: &'b mut [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), Short> {
        let available = self.buf.len().saturating_sub(self.pos);
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(Short {
                needed: bytes.len(),
                available,
            }),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), Short> {
        self.put(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), Short> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), Short> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<(), Short> {
        self.put(&v.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_shortfall_without_consuming() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(
            r.u32(),
            Err(Short {
                needed: 4,
                available: 3
            })
        );
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.bytes(2).unwrap_err().available, 1);
        assert_eq!(r.rest(), &[3]);
    }

    #[test]
    fn writer_refuses_to_overrun() {
        let mut buf = [0u8; 5];
        let mut w = Writer::new(&mut buf, 0);
        w.u32(0xdead_beef).unwrap();
        assert!(w.u16(1).is_err());
        w.u8(7).unwrap();
        assert_eq!(w.pos(), 5);
        assert_eq!(buf, [0xde, 0xad, 0xbe, 0xef, 7]);
    }
}
