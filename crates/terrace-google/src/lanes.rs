//! Lanes: a few HTTP clients, each with its own connection pool, so that
//! requests in flight spread over several HTTP/2 connections.
//!
//! hyper opens ONE HTTP/2 connection per host and queues requests inside it
//! once the server's stream limit is reached (Google allows 100 streams per
//! connection). With thousands of designs in flight, all but the first 100
//! would wait for a free stream. So each [`Lane`] is its own
//! `reqwest::Client` (its own pool, hence its own HTTP/2 connection) and
//! counts its requests in flight; a request takes the first lane with fewer
//! than `limit` in flight, and a new lane is made when all are full. Lanes
//! are kept once made; reqwest's idle timeout closes their idle connections.
//!
//! Over HTTP/1.1 a client opens a connection per request in flight anyway,
//! so there is one lane with no limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One client and how many requests it has in flight.
#[derive(Debug)]
struct Lane {
    http: reqwest::Client,
    in_flight: AtomicUsize,
}

/// A request's place on a lane, held until the request is over (for Gemini,
/// until its response stream is dropped). Dropping it frees the place.
#[derive(Debug)]
pub(crate) struct LaneGuard {
    lane: Arc<Lane>,
}

impl LaneGuard {
    /// The client to send the request with.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.lane.http
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.lane.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes a lane's client. Called once at start (where an error is a
/// configuration error) and then whenever every lane is full.
pub(crate) type MakeClient = Box<dyn Fn() -> reqwest::Result<reqwest::Client> + Send + Sync>;

/// The lanes to one upstream.
pub(crate) struct Lanes {
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// Requests in flight per lane before another lane is used.
    limit: usize,
    make: MakeClient,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("lanes", &self.len()).field("limit", &self.limit).finish()
    }
}

impl Lanes {
    /// Lanes of at most `limit` requests in flight each (`usize::MAX`: one
    /// lane), with the first one made now.
    pub(crate) fn new(limit: usize, make: MakeClient) -> reqwest::Result<Self> {
        let first = Arc::new(Lane { http: make()?, in_flight: AtomicUsize::new(0) });
        Ok(Self { lanes: Mutex::new(vec![first]), limit: limit.max(1), make })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Lane>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place on the first lane with room, on a new lane when all are full.
    /// The new lane's client is built without the lock held (building one
    /// sets up TLS), so other requests are not held up meanwhile; the lanes
    /// are looked at again afterwards, and a client made for nothing (a
    /// place came free, or another request added a lane) is dropped.
    pub(crate) fn acquire(&self) -> LaneGuard {
        if let Some(guard) = self.place(&self.lock()) {
            return guard;
        }
        let made = (self.make)();
        let mut lanes = self.lock();
        if let Some(guard) = self.place(&lanes) {
            return guard;
        }
        let lane = match made {
            Ok(http) => {
                let lane = Arc::new(Lane { http, in_flight: AtomicUsize::new(0) });
                lanes.push(Arc::clone(&lane));
                tracing::debug!(lanes = lanes.len(), "google: every connection is full, opened a lane");
                lane
            }
            Err(e) => {
                // The first lane was made with the same settings, so this
                // should not happen; the least busy lane queues the request.
                tracing::warn!(error = %crate::error::describe(e), "google: could not open a lane");
                let least = lanes.iter().min_by_key(|l| l.in_flight.load(Ordering::Relaxed));
                Arc::clone(least.expect("there is always the first lane"))
            }
        };
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        LaneGuard { lane }
    }

    /// A place on the first of `lanes` with room. Places are only taken
    /// under the lock (and freed without it), so a lane seen with room
    /// still has it when its count goes up.
    fn place(&self, lanes: &[Arc<Lane>]) -> Option<LaneGuard> {
        let lane = lanes.iter().find(|l| l.in_flight.load(Ordering::Relaxed) < self.limit)?;
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(LaneGuard { lane: Arc::clone(lane) })
    }

    /// How many lanes were made.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(limit: usize) -> Lanes {
        Lanes::new(limit, Box::new(|| reqwest::Client::builder().build())).expect("lanes")
    }

    /// Which lane (by position) a guard is on.
    fn position(lanes: &Lanes, guard: &LaneGuard) -> usize {
        lanes.lock().iter().position(|l| Arc::ptr_eq(l, &guard.lane)).expect("a lane of these")
    }

    #[test]
    fn request_101_goes_to_a_second_lane() {
        let lanes = lanes(100);
        let first: Vec<LaneGuard> = (0..100).map(|_| lanes.acquire()).collect();
        assert!(first.iter().all(|g| position(&lanes, g) == 0));
        assert_eq!(lanes.len(), 1);
        let g101 = lanes.acquire();
        assert_eq!(position(&lanes, &g101), 1);
        assert_eq!(lanes.len(), 2);
        let g102 = lanes.acquire();
        assert_eq!(position(&lanes, &g102), 1, "the second lane has room");
    }

    #[test]
    fn a_dropped_guard_frees_its_place_and_lanes_are_kept() {
        let lanes = lanes(2);
        let mut guards: Vec<LaneGuard> = (0..5).map(|_| lanes.acquire()).collect();
        let at: Vec<usize> = guards.iter().map(|g| position(&lanes, g)).collect();
        assert_eq!(at, [0, 0, 1, 1, 2]);
        // A place on the first lane frees up: the next request takes it.
        drop(guards.remove(0));
        let again = lanes.acquire();
        assert_eq!(position(&lanes, &again), 0);
        // Everything ends: the lanes stay, and the first takes requests again.
        drop(guards);
        drop(again);
        assert_eq!(lanes.len(), 3);
        let g = lanes.acquire();
        assert_eq!(position(&lanes, &g), 0);
        assert_eq!(lanes.lock()[0].in_flight.load(Ordering::Relaxed), 1);
        assert!(lanes.lock()[1..].iter().all(|l| l.in_flight.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn without_a_limit_there_is_one_lane() {
        let lanes = lanes(usize::MAX);
        let guards: Vec<LaneGuard> = (0..1000).map(|_| lanes.acquire()).collect();
        assert!(guards.iter().all(|g| position(&lanes, g) == 0));
        assert_eq!(lanes.len(), 1);
    }

    #[test]
    fn guards_taken_from_many_threads_never_overfill_a_lane() {
        let lanes = lanes(10);
        let guards: Vec<LaneGuard> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| (0..25).map(|_| lanes.acquire()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().expect("joined")).collect()
        });
        assert_eq!(guards.len(), 200);
        assert_eq!(lanes.len(), 20);
        assert!(lanes.lock().iter().all(|l| l.in_flight.load(Ordering::Relaxed) == 10));
    }
}
