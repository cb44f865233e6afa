//! Random numbers from the operating system, for session ids and the
//! subscriber's NAK timing seed.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A random `u64` from the operating system or, should that fail, from
/// std's randomly keyed hasher mixed with the time and process id.
pub(crate) fn random_u64() -> u64 {
    use rand::TryRng;
    if let Ok(n) = rand::rngs::SysRng.try_next_u64() {
        return n;
    }
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .hash(&mut h);
    std::process::id().hash(&mut h);
    Instant::now().hash(&mut h);
    h.finish()
}
