//! Splitting a large message body into fragments.

use super::{
    Fragment, MessageKind, DEFAULT_MAX_DATAGRAM, FRAGMENT_FIXED, HEADER_LEN, MESSAGE_HEADER_LEN,
};

/// Largest fragment data that fits in an otherwise empty datagram of
/// `max_datagram` bytes (`0` if none fits).
///
/// ```
/// assert_eq!(grapevine_core::wire::fragment_capacity(1452), 1452 - 28 - 4 - 13);
/// ```
#[must_use]
pub const fn fragment_capacity(max_datagram: usize) -> usize {
    max_datagram.saturating_sub(HEADER_LEN + MESSAGE_HEADER_LEN + FRAGMENT_FIXED)
}

/// Iterator over the fragments of one message body, each at most `max_data`
/// bytes of data, in order of offset.
///
/// ```
/// use grapevine_core::wire::{fragment_capacity, Fragments, MessageKind};
/// let body = vec![7u8; 3000];
/// let frags: Vec<_> = Fragments::new(1, MessageKind::LeafSnapshot, &body, fragment_capacity(1452)).collect();
/// assert_eq!(frags.len(), 3);
/// assert_eq!(frags[2].offset as usize + frags[2].data.len(), 3000);
/// ```
#[derive(Clone, Debug)]
pub struct Fragments<'a> {
    frag_id: u32,
    inner_kind: u8,
    body: &'a [u8],
    total_len: u32,
    offset: usize,
    max_data: usize,
}

impl<'a> Fragments<'a> {
    /// Splits `body` (of a message of kind `inner_kind`) into pieces of at most
    /// `max_data` bytes. A `max_data` of 0 is treated as the default
    /// datagram's capacity. A body longer than `u32::MAX` or an empty one
    /// yields no fragment.
    #[must_use]
    pub fn new(frag_id: u32, inner_kind: MessageKind, body: &'a [u8], max_data: usize) -> Self {
        let total_len = u32::try_from(body.len()).unwrap_or(0);
        let max_data = if max_data == 0 {
            fragment_capacity(DEFAULT_MAX_DATAGRAM)
        } else {
            max_data
        };
        Self {
            frag_id,
            inner_kind: inner_kind as u8,
            body: if total_len == 0 { &[] } else { body },
            total_len,
            offset: 0,
            max_data,
        }
    }
}

impl<'a> Iterator for Fragments<'a> {
    type Item = Fragment<'a>;

    fn next(&mut self) -> Option<Fragment<'a>> {
        let rest = self.body.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(self.max_data);
        let data = rest.get(..n)?;
        let offset = u32::try_from(self.offset).ok()?;
        self.offset += n;
        Some(Fragment {
            frag_id: self.frag_id,
            total_len: self.total_len,
            offset,
            inner_kind: self.inner_kind,
            data,
        })
    }
}
