//! The worker's slots, addressed by index.

use super::Slot;
use std::ops::{Deref, DerefMut};

/// The slots, made once at start and never resized: an index taken from
/// `0..len()`, or carried in a plan or run made from one, is always in range.
pub(super) struct Slots<P>(Vec<Slot<P>>);

impl<P> Slots<P> {
    pub(super) fn new(slots: Vec<Slot<P>>) -> Self {
        Slots(slots)
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "slot indexes come from 0..len() of a list that is never resized"
    )]
    pub(super) fn at(&self, i: usize) -> &Slot<P> {
        &self.0[i]
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "slot indexes come from 0..len() of a list that is never resized"
    )]
    pub(super) fn at_mut(&mut self, i: usize) -> &mut Slot<P> {
        &mut self.0[i]
    }
}

// Iterating reads the list; only `Slots::new` makes it, so its length is fixed.
impl<P> Deref for Slots<P> {
    type Target = [Slot<P>];

    fn deref(&self) -> &[Slot<P>] {
        &self.0
    }
}

impl<P> DerefMut for Slots<P> {
    fn deref_mut(&mut self) -> &mut [Slot<P>] {
        &mut self.0
    }
}
