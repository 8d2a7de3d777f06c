//! Requests in flight through the gateway, per key, for keys with a `concurrency` limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Requests in flight through the gateway, per key: one table per service, shared by
/// every public worker, so a key's `concurrency` limit holds whichever thread serves it.
#[derive(Debug, Default)]
pub struct InFlightTable(Mutex<HashMap<String, u32>>);

impl InFlightTable {
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &str, limit: u32) -> Option<InFlight> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(InFlight {
            table: self.clone(),
            key: key.to_string(),
        })
    }
}

/// One request's slot; given back when dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    table: Arc<InFlightTable>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let t = Arc::new(InFlightTable::default());
        let a = t.try_acquire("k", 2).unwrap();
        let b = t.try_acquire("k", 2).unwrap();
        assert!(t.try_acquire("k", 2).is_none());
        assert!(t.try_acquire("other", 2).is_some());
        drop(a);
        let c = t.try_acquire("k", 2).unwrap();
        drop((b, c));
        assert!(t.0.lock().unwrap().is_empty());
        assert!(t.try_acquire("k", 0).is_none());
        assert!(t.0.lock().unwrap().is_empty());
    }
}
