//! Storage: one ATA/ATAPI command layer ([`ata`], [`atapi`]) under two
//! register front ends, the PIIX3 IDE function ([`ide`]) and the ICH9
//! AHCI controller ([`ahci`]). The front ends move registers, FISes and
//! DMA descriptors; every command is decoded and executed by the shared
//! layer over the block stack of `rehost-disk`.

pub mod ahci;
pub mod ahci_spec;
pub mod ata;
pub mod ata_spec;
pub mod atapi;
pub mod atapi_spec;
pub mod dma;
pub mod ide;
pub mod ide_spec;
pub mod testing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Limits a log line about guest misbehaviour to one per second per call
/// site, counting what it held back.
#[derive(Debug, Default)]
pub struct RateLimit {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> Self {
        Self {
            last_second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// suppressed since the last one.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 1;
        let last = self.last_second.load(Ordering::Relaxed);
        if last != now
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs a guest error at warn level, at most once per second per call site.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::storage::RateLimit = $crate::storage::RateLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            if suppressed > 0 {
                tracing::warn!("{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn rate_limit_allows_one_per_second() {
        let l = RateLimit::new();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
    }
}
