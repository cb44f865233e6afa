//! Building blocks of authenticated frames (the security work, issue 8; see
//! `docs/design/authenticated-frames.md`). Nothing here is on the wire yet:
//! PROTOCOL.md does not specify authenticated datagrams until the engines
//! seal and open them.

mod key;
mod replay;

pub use key::{KeyId, StreamKey, KEY_LEN};
pub use replay::{ReplayWindow, Verdict, WINDOW};
