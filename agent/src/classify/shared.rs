//! One copy of each distinct classification, shared by every connection that has it.
//!
//! A classification names identities, not addresses, so a node's connections fall into
//! far fewer distinct ones than there are connections (all of one pod's egress to the
//! internet share one); at 344 bytes each, one copy per connection was a third of the
//! agent's memory at 100k connections.

use std::sync::Arc;

use super::Classification;
use crate::net::FastSet;

#[derive(Debug, Default)]
pub struct SharedClasses {
    set: FastSet<Arc<Classification>>,
    /// Size after the last sweep: the next one runs when the set has doubled since.
    swept_at: usize,
}

impl SharedClasses {
    /// The shared copy of `k`.
    pub fn share(&mut self, k: Classification) -> Arc<Classification> {
        if let Some(a) = self.set.get(&k) {
            return a.clone();
        }
        if self.set.len() >= 2 * self.swept_at.max(64) {
            self.sweep();
        }
        let a = Arc::new(k);
        self.set.insert(a.clone());
        a
    }

    /// Forget the ones no connection holds any more (amortized: runs as the set doubles).
    fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.swept_at = self.set.len();
    }

    /// Distinct classifications kept.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        classify::{Classification, EndpointKind},
        test_support::{classification, identity},
    };

    fn bare_classification(src: EndpointKind) -> Classification {
        let mut k = classification();
        k.src_identity = identity(src);
        k
    }

    #[test]
    fn equal_classifications_share_one_copy() {
        let mut s = SharedClasses::default();
        let a = s.share(bare_classification(EndpointKind::Pod));
        let b = s.share(bare_classification(EndpointKind::Pod));
        let c = s.share(bare_classification(EndpointKind::Node));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn unheld_copies_are_swept_as_the_set_doubles() {
        let mut s = SharedClasses::default();
        let held = s.share(bare_classification(EndpointKind::Pod));
        for i in 0..127 {
            let mut k = bare_classification(EndpointKind::Internet);
            k.sensitive = Some(format!("t{i}"));
            drop(s.share(k));
        }
        assert_eq!(s.len(), 128);
        // The 129th finds the set doubled since the last sweep (64 at least): only the
        // held one survives, then the new one joins it.
        let mut k = bare_classification(EndpointKind::Internet);
        k.sensitive = Some("new".into());
        let _new = s.share(k);
        assert_eq!(s.len(), 2);
        assert!(Arc::ptr_eq(
            &held,
            &s.share(bare_classification(EndpointKind::Pod))
        ));
    }
}
