//! Stream repeaters (PROTOCOL.md §12): carry a stream from a network that
//! has it by multicast to one that has not, over a reliable unicast link.
//!
//! A relay never makes a Grapevine datagram: everything it puts on a group
//! or a link is a byte-for-byte copy of a datagram it heard, and everything
//! it sends upstream is a copy of a subscriber's NAK. It holds no key.

pub mod frame;

#[cfg(test)]
mod tests;
