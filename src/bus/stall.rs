//! Finding partitions of the messages topic that nobody consumes.
//!
//! A consumer group should hand a dead member's partitions to the others
//! once its session timed out. A coordinator can fail to (tansu 0.6 does:
//! see docs/CONFIG.md), and then those partitions' records wait until the
//! membership changes. [`StallWatch`] notices such a partition from the
//! group's committed offsets and the partitions' ends, read periodically
//! by every instance: records are waiting, and the committed offset has not
//! moved for longer than the limit. When such a partition belongs to some
//! other member, or to none, while this member's own partitions are not
//! stalled, this member rejoins the group (a change of membership, which
//! makes the coordinator assign every partition anew).
//!
//! Its own partitions being stalled means its persister cannot store
//! (the database is down, say), which a rebalance does not cure, so it
//! does nothing then. An instance holding no stalled partition cannot tell
//! a store that is down for everyone from a partition without an owner; so
//! that such an outage does not become a rebalance every limit, the wait
//! doubles after every rejoin that did not end the stall, up to
//! [`MAX_WAIT`], and is reset once no partition has records waiting
//! without progress.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Longest wait between two rejoins while partitions stay stalled.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// One partition of the messages topic as read from the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub partition: i32,
    /// The group's committed offset (the partition's start when the group
    /// never committed one).
    pub committed: i64,
    /// The partition's end offset (high watermark).
    pub end: i64,
}

#[derive(Debug)]
struct Seen {
    committed: i64,
    /// Since when records have waited with the committed offset unmoved.
    since: Instant,
}

/// The stall detector of one instance (see the module comment).
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    wait: Duration,
    seen: BTreeMap<i32, Seen>,
}

impl StallWatch {
    /// A detector that calls a partition stalled after `limit` without
    /// progress (the session timeout and then some: by then a healthy
    /// group has moved a dead member's partitions).
    pub fn new(limit: Duration) -> StallWatch {
        StallWatch {
            limit,
            wait: limit,
            seen: BTreeMap::new(),
        }
    }

    /// Forgets every partition's history: after readings failed (the
    /// broker did not answer), a stall is counted from the next reading on.
    pub fn forget(&mut self) {
        self.seen.clear();
    }

    /// Records `readings`, taken at `now`, and returns the stalled
    /// partitions this member should rejoin for (empty when it should
    /// not). `owned` are the partitions assigned to this member.
    pub fn observe(
        &mut self,
        now: Instant,
        readings: &[Reading],
        owned: &BTreeSet<i32>,
    ) -> Vec<i32> {
        let mut stalled = Vec::new();
        // Whether some partition has records waiting without progress,
        // stalled or not yet.
        let mut waiting = false;
        for r in readings {
            let seen = self.seen.entry(r.partition).or_insert(Seen {
                committed: r.committed,
                since: now,
            });
            if seen.committed != r.committed || r.committed >= r.end {
                // Progress, or nothing waiting.
                seen.committed = r.committed;
                seen.since = now;
                continue;
            }
            waiting = true;
            if now.saturating_duration_since(seen.since) >= self.wait {
                stalled.push(r.partition);
            }
        }
        let current: BTreeSet<i32> = readings.iter().map(|r| r.partition).collect();
        self.seen.retain(|p, _| current.contains(p));
        if !waiting {
            self.wait = self.limit;
        }
        if stalled.is_empty() {
            return stalled;
        }
        if stalled.iter().any(|p| owned.contains(p)) {
            return Vec::new();
        }
        // Acting: the next rejoin for a stall waits longer, counted from
        // now.
        self.wait = (self.wait * 2).min(MAX_WAIT.max(self.limit));
        for seen in self.seen.values_mut() {
            seen.since = now;
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(20);

    fn r(partition: i32, committed: i64, end: i64) -> Reading {
        Reading {
            partition,
            committed,
            end,
        }
    }

    fn owned(ps: &[i32]) -> BTreeSet<i32> {
        ps.iter().copied().collect()
    }

    #[test]
    fn a_foreign_partition_without_progress_past_the_limit_is_reported() {
        let mut w = StallWatch::new(LIMIT);
        let t0 = Instant::now();
        let mine = owned(&[0]);
        assert!(w.observe(t0, &[r(0, 5, 9), r(1, 3, 8)], &mine).is_empty());
        // Partition 0 progresses, partition 1 does not.
        let t1 = t0 + Duration::from_secs(19);
        assert!(w.observe(t1, &[r(0, 9, 12), r(1, 3, 9)], &mine).is_empty());
        let t2 = t0 + LIMIT;
        assert_eq!(w.observe(t2, &[r(0, 12, 12), r(1, 3, 10)], &mine), [1]);
    }

    #[test]
    fn nothing_is_reported_while_a_own_partition_is_stalled_too() {
        // The store is down: every partition with waiting records is stuck,
        // and a rebalance would not help.
        let mut w = StallWatch::new(LIMIT);
        let t0 = Instant::now();
        let mine = owned(&[0]);
        w.observe(t0, &[r(0, 5, 9), r(1, 3, 8)], &mine);
        let t1 = t0 + LIMIT * 3;
        assert!(w.observe(t1, &[r(0, 5, 9), r(1, 3, 8)], &mine).is_empty());
    }

    #[test]
    fn partitions_with_nothing_waiting_are_not_stalled() {
        let mut w = StallWatch::new(LIMIT);
        let t0 = Instant::now();
        w.observe(t0, &[r(0, 5, 5), r(1, 0, 0)], &owned(&[]));
        let t1 = t0 + LIMIT * 3;
        assert!(w
            .observe(t1, &[r(0, 5, 5), r(1, 0, 0)], &owned(&[]))
            .is_empty());
        // Records arrive: the clock starts then, not at the first reading.
        assert!(w
            .observe(t1, &[r(0, 5, 6), r(1, 0, 0)], &owned(&[]))
            .is_empty());
        let t2 = t1 + LIMIT - Duration::from_secs(1);
        assert!(w
            .observe(t2, &[r(0, 5, 6), r(1, 0, 0)], &owned(&[]))
            .is_empty());
        assert_eq!(
            w.observe(t1 + LIMIT, &[r(0, 5, 6), r(1, 0, 0)], &owned(&[])),
            [0]
        );
    }

    #[test]
    fn the_wait_doubles_while_rejoining_does_not_help_and_resets_after() {
        let mut w = StallWatch::new(LIMIT);
        let t0 = Instant::now();
        let none = owned(&[]);
        let stuck = [r(0, 1, 4)];
        w.observe(t0, &stuck, &none);
        assert_eq!(w.observe(t0 + LIMIT, &stuck, &none), [0]);
        // Counted from the rejoin, twice as long.
        let t1 = t0 + LIMIT;
        assert!(w.observe(t1 + LIMIT, &stuck, &none).is_empty());
        assert_eq!(w.observe(t1 + LIMIT * 2, &stuck, &none), [0]);
        let t2 = t1 + LIMIT * 2;
        assert!(w.observe(t2 + LIMIT * 3, &stuck, &none).is_empty());
        assert_eq!(w.observe(t2 + LIMIT * 4, &stuck, &none), [0]);
        // Progress everywhere: back to the limit.
        let t3 = t2 + LIMIT * 4;
        assert!(w.observe(t3, &[r(0, 4, 4)], &none).is_empty());
        assert!(w.observe(t3, &[r(0, 4, 6)], &none).is_empty());
        assert_eq!(w.observe(t3 + LIMIT, &[r(0, 4, 6)], &none), [0]);
    }

    #[test]
    fn the_wait_never_exceeds_the_maximum() {
        let mut w = StallWatch::new(LIMIT);
        let mut t = Instant::now();
        let stuck = [r(0, 1, 4)];
        w.observe(t, &stuck, &owned(&[]));
        let mut reported = 0;
        for _ in 0..2000 {
            t += Duration::from_secs(5);
            if !w.observe(t, &stuck, &owned(&[])).is_empty() {
                reported += 1;
            }
        }
        // 10,000 s: 20 + 40 + 80 + 160 + 320 s, then every 600 s.
        assert_eq!(reported, 5 + (10_000 - 620) / 600);
    }

    #[test]
    fn forgetting_restarts_every_clock() {
        let mut w = StallWatch::new(LIMIT);
        let t0 = Instant::now();
        let stuck = [r(0, 1, 4)];
        w.observe(t0, &stuck, &owned(&[]));
        w.forget();
        let t1 = t0 + LIMIT;
        assert!(w.observe(t1, &stuck, &owned(&[])).is_empty());
        assert_eq!(w.observe(t1 + LIMIT, &stuck, &owned(&[])), [0]);
    }
}
