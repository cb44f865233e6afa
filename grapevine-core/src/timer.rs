//! One timer table per engine: every deadline an engine keeps, indexed by a
//! small enum, in place of ad hoc `Option<Instant>` fields.

use std::time::Instant;

/// A timer of one engine: an enum whose variants index a [`Timers`] table.
pub(crate) trait TimerId: Copy {
    /// Number of timers.
    const COUNT: usize;
    /// This timer's index, `< COUNT`.
    fn index(self) -> usize;
}

/// Deadlines of one engine, one slot per timer.
#[derive(Debug, Clone)]
pub(crate) struct Timers<T: TimerId> {
    at: Vec<Option<Instant>>,
    _id: std::marker::PhantomData<T>,
}

impl<T: TimerId> Default for Timers<T> {
    fn default() -> Self {
        Self {
            at: vec![None; T::COUNT],
            _id: std::marker::PhantomData,
        }
    }
}

impl<T: TimerId> Timers<T> {
    /// Arms `timer` for `at`, replacing its previous deadline.
    pub(crate) fn set(&mut self, timer: T, at: Instant) {
        if let Some(slot) = self.at.get_mut(timer.index()) {
            *slot = Some(at);
        }
    }

    /// Arms or disarms `timer`.
    pub(crate) fn set_opt(&mut self, timer: T, at: Option<Instant>) {
        if let Some(slot) = self.at.get_mut(timer.index()) {
            *slot = at;
        }
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: T) {
        self.set_opt(timer, None);
    }

    /// The deadline of `timer`, if armed.
    pub(crate) fn get(&self, timer: T) -> Option<Instant> {
        self.at.get(timer.index()).copied().flatten()
    }

    /// Whether `timer` is armed and its deadline has come at `now`.
    pub(crate) fn is_due(&self, timer: T, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Clone, Copy)]
    enum T {
        A,
        B,
    }

    impl TimerId for T {
        const COUNT: usize = 2;
        fn index(self) -> usize {
            self as usize
        }
    }

    #[test]
    fn earliest_armed_deadline_wins_and_stopped_timers_do_not_count() {
        let now = Instant::now();
        let mut t = Timers::<T>::default();
        assert_eq!(t.next(), None);
        t.set(T::A, now + Duration::from_millis(5));
        t.set(T::B, now + Duration::from_millis(2));
        assert_eq!(t.next(), Some(now + Duration::from_millis(2)));
        assert!(!t.is_due(T::B, now));
        assert!(t.is_due(T::B, now + Duration::from_millis(2)));
        t.stop(T::B);
        assert_eq!(t.next(), Some(now + Duration::from_millis(5)));
        assert_eq!(t.get(T::B), None);
    }
}
