//! Instance liveness in the store: every instance with a store beats, and
//! whoever needs to know whether an instance is alive judges its beats.
//!
//! **Beating.** An instance writes `catga:{live:<instance id>}:beat` every
//! [`Config::heartbeat_interval`](crate::Config::heartbeat_interval) (250 ms
//! by default): a count that grows by one per beat (it starts at the wall
//! clock's milliseconds, so a restarted instance with the same id never
//! repeats an old count), expiring after [`BEAT_TTL`] only to clean up. On
//! Redis it beats from an OS thread of its own, with its own current-thread
//! tokio runtime and its own connection, so handlers that keep the
//! runtime's workers busy (CPU-heavy work, a blocking call) do not stop the
//! beats of a live instance. The in-memory store is in this process: it
//! beats on a task. A clean shutdown stops the beats and writes a last one
//! marked `gone`, so what the instance left behind is taken over at once.
//! Instances that may run sagas also join the set `catga:{live}:instances`
//! (and those that recover a saga type `catga:{live}:sweepers:<saga name>`), which the saga
//! sweep reads to find dead owners ([`crate::saga`](mod@crate::saga)).
//!
//! **Judging.** A judge reads an instance's beat now and then and
//! calls it dead only when the count did not change across successful
//! reads spanning [`Config::heartbeat_timeout`](crate::Config::heartbeat_timeout)
//! (1 s by default) of the judge's own clock, each read at most half that
//! after the previous one (or twice the judge's own look interval, if that
//! is longer). A missing beat counts as no change; a `gone` beat is dead at
//! once. A failed read, or a gap between reads, starts the window again:
//! during a store failover nobody can read, so an owner that beats again
//! once the store is back is never judged dead for the failover's
//! duration. The judgement is not a TTL on what the instance holds —
//! taking over is a compare-and-swap on the holder in the claim's or the
//! lease's own Cluster slot ("if it is still X's, make it mine"), so the
//! cross-slot judgement never races with the owner's own writes.
//!
//! Why these defaults: a beat every 250 ms is four beats per judgement
//! window, so a live instance is judged dead only if four beats in a row
//! did not reach the store (a second of its thread not running, or of its
//! connection not working); a 1 s window keeps a dead instance's work
//! waiting about 1 s plus one look. One small write per instance every
//! 250 ms, whatever it runs.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::Result;
use crate::store::{Beat, Key, Store};

/// How long a beat record outlives its last beat: only to clean up after
/// an instance that is gone (judges need just the last second).
pub const BEAT_TTL: Duration = Duration::from_secs(60);

/// Every this many beats, the beating thread adds its instance to its sets
/// again (a judge that took it for dead removed it; it comes back).
const REJOIN_EVERY: u64 = 20;

/// The heartbeat record of `instance`.
pub(crate) fn beat_key(instance: &str) -> Key {
    Key::new(format!("live:{instance}"), "beat")
}

/// The instances that may own sagas.
pub(crate) fn members_key() -> Key {
    Key::new("live", "instances")
}

/// The instances that recover sagas named `saga` (among which a dead
/// instance's sagas of that type are shared).
pub(crate) fn sweepers_key(saga: &str) -> Key {
    Key::new("live", format!("sweepers:{saga}"))
}

/// The sagas `instance` runs (members `<saga name>:<id>`), kept by the
/// saga runner; survivors take them over when it is judged dead.
pub(crate) fn sagas_owned_key(instance: &str) -> Key {
    Key::new(format!("saga-owner:{instance}"), "sagas")
}

/// The instance an owner string names: claims and leases are owned by
/// `<instance id>#<random>` (instance ids have no `#`).
pub(crate) fn instance_of(owner: &str) -> &str {
    owner.split_once('#').map_or(owner, |(instance, _)| instance)
}

/// This instance's beating; stops when [`stop`](Heartbeat::stop)ped or dropped.
pub(crate) struct Heartbeat {
    instance: String,
    stop: watch::Sender<bool>,
    stopped: Option<oneshot::Receiver<()>>,
    sets: Vec<Key>,
}

impl Heartbeat {
    /// Write the first beat (an error if the store does not take it), join
    /// `sets`, then beat every `every` until stopped.
    pub(crate) async fn start(
        store: &Store,
        instance: &str,
        every: Duration,
        clock: Clock,
        sets: Vec<Key>,
    ) -> Result<Heartbeat> {
        let first = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let key = beat_key(instance);
        store.beat(&key, Beat { count: first, gone: false }, BEAT_TTL).await?;
        for set in &sets {
            store.set_add(set, instance).await?;
        }
        let (stop, stopping) = watch::channel(false);
        let (done, stopped) = oneshot::channel();
        let beater = Beater { key, every, count: first, instance: instance.to_owned(), sets: sets.clone() };
        if store.is_memory() {
            // In this process: a task beats, on the instance's clock.
            let store = store.clone();
            tokio::spawn(async move {
                beater.run(&store, Some(clock), stopping).await;
                let _ = done.send(());
            });
        } else {
            let store = store.clone();
            let on_thread = std::thread::Builder::new().name("catga-heartbeat".into()).spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "heartbeat: no runtime for its thread; this instance will look dead");
                        return;
                    }
                };
                runtime.block_on(async move {
                    if let Some(own) = own_connection(&store, beater.every, stopping.clone()).await {
                        beater.run(&own, None, stopping).await;
                    }
                    let _ = done.send(());
                });
            });
            if let Err(e) = on_thread {
                tracing::error!(error = %e, "heartbeat: could not start its thread; this instance will look dead");
            }
        }
        Ok(Heartbeat { instance: instance.to_owned(), stop, stopped: Some(stopped), sets })
    }

    /// Stop beating (waiting up to a second for the last beat in flight),
    /// then write a last beat marked `gone` so that judges take over what
    /// this instance left at once; leave the sets unless it still owns
    /// sagas (handed over by the drain: the survivors that take the last of
    /// them over remove it).
    pub(crate) async fn stop(&mut self, store: &Store) {
        let _ = self.stop.send(true);
        if let Some(stopped) = self.stopped.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), stopped).await;
        }
        let gone = Beat { count: u64::MAX, gone: true };
        if let Err(e) = store.beat(&beat_key(&self.instance), gone, BEAT_TTL).await {
            tracing::warn!(instance = self.instance, error = %e, "heartbeat: could not write the last beat");
        }
        let owns_nothing = store.set_members(&sagas_owned_key(&self.instance)).await.is_ok_and(|s| s.is_empty());
        if owns_nothing {
            for set in &self.sets {
                let _ = store.set_remove(set, &self.instance).await;
            }
        }
    }
}

/// A connection of the heartbeat's own, on its thread's runtime; tried
/// again every beat until it works or the heartbeat is stopped.
async fn own_connection(store: &Store, every: Duration, mut stopping: watch::Receiver<bool>) -> Option<Store> {
    let mut tries = 0u32;
    loop {
        match store.reconnect().await {
            Ok(own) => return Some(own),
            Err(e) => {
                tries += 1;
                if tries == 1 || tries.is_multiple_of(40) {
                    tracing::warn!(error = %e, "heartbeat: cannot open its own store connection; retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopping.changed() => return None,
        }
    }
}

struct Beater {
    key: Key,
    every: Duration,
    count: u64,
    instance: String,
    sets: Vec<Key>,
}

impl Beater {
    async fn run(mut self, store: &Store, clock: Option<Clock>, mut stopping: watch::Receiver<bool>) {
        let mut failing = 0u32;
        loop {
            let pause = async {
                match clock {
                    Some(clock) => clock.sleep(self.every).await,
                    None => tokio::time::sleep(self.every).await,
                }
            };
            // A changed value or a dropped handle both stop the beats.
            tokio::select! {
                _ = pause => {}
                _ = stopping.changed() => return,
            }
            if *stopping.borrow() {
                return;
            }
            self.count += 1;
            // A beat that takes longer than a few intervals is given up: the
            // next one is what counts.
            let beat = Beat { count: self.count, gone: false };
            match tokio::time::timeout(self.every * 4, store.beat(&self.key, beat, BEAT_TTL)).await {
                Ok(Ok(())) => failing = 0,
                failed => {
                    failing += 1;
                    if failing == 4 {
                        let error = failed.map_or_else(|_| "no answer".to_owned(), |r| format!("{:?}", r.err()));
                        tracing::warn!(
                            instance = self.instance,
                            error,
                            "heartbeat: beats are not reaching the store; other instances may take this one for dead"
                        );
                    }
                }
            }
            if self.count.is_multiple_of(REJOIN_EVERY) {
                for set in &self.sets {
                    let _ = store.set_add(set, &self.instance).await;
                }
            }
        }
    }
}

/// Judges instances by their beats (see the module docs). One per
/// observer: a waiting copy, a saga sweep.
pub(crate) struct Judge {
    window: Duration,
    max_gap: Duration,
    looks: HashMap<String, Look>,
}

struct Look {
    /// The count last read (`None`: no beat record).
    count: Option<u64>,
    /// When that count was first read.
    since: Instant,
    /// When it was last read.
    last: Instant,
}

impl Judge {
    /// Dead after `window` without a change; `look_every`: how often this
    /// judge means to look (reads further apart than twice that, or than
    /// half the window, start the window again).
    pub(crate) fn new(window: Duration, look_every: Duration) -> Judge {
        Judge { window, max_gap: (window / 2).max(look_every * 2), looks: HashMap::new() }
    }

    /// Record one read of `instance`'s beat, made at `now`; whether the
    /// instance is judged dead.
    pub(crate) fn look(&mut self, instance: &str, read: &Result<Option<Beat>>, now: Instant) -> bool {
        let count = match read {
            Err(_) => {
                self.looks.remove(instance);
                return false;
            }
            Ok(Some(beat)) if beat.gone => return true,
            Ok(beat) => beat.map(|b| b.count),
        };
        match self.looks.get_mut(instance) {
            Some(look) if look.count == count && now.saturating_duration_since(look.last) <= self.max_gap => {
                look.last = now;
                now.saturating_duration_since(look.since) >= self.window
            }
            _ => {
                self.looks.insert(instance.to_owned(), Look { count, since: now, last: now });
                false
            }
        }
    }

    /// Forget what was seen of `instance`.
    pub(crate) fn forget(&mut self, instance: &str) {
        self.looks.remove(instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::StoreError;

    fn beat(count: u64) -> Result<Option<Beat>> {
        Ok(Some(Beat { count, gone: false }))
    }

    #[test]
    fn dead_only_after_a_whole_window_of_successful_reads_without_a_change() {
        let (ms, t0) = (Duration::from_millis, Instant::now());
        let mut judge = Judge::new(ms(1000), ms(250));
        assert!(!judge.look("a", &beat(7), t0));
        assert!(!judge.look("a", &beat(7), t0 + ms(500)));
        assert!(judge.look("a", &beat(7), t0 + ms(1000)), "no change for 1 s");
        // A change starts the window again.
        assert!(!judge.look("b", &beat(1), t0));
        assert!(!judge.look("b", &beat(2), t0 + ms(500)));
        assert!(!judge.look("b", &beat(2), t0 + ms(1000)));
        assert!(judge.look("b", &beat(2), t0 + ms(1500)));
        // A missing beat is no change.
        assert!(!judge.look("c", &Ok(None), t0));
        assert!(!judge.look("c", &Ok(None), t0 + ms(500)));
        assert!(judge.look("c", &Ok(None), t0 + ms(1000)));
        // Gone is dead at once.
        assert!(judge.look("d", &Ok(Some(Beat { count: 1, gone: true })), t0));
    }

    #[test]
    fn a_failed_read_or_a_gap_never_counts_toward_death() {
        let (ms, t0) = (Duration::from_millis, Instant::now());
        let mut judge = Judge::new(ms(1000), ms(250));
        let failover =
            Err(Error::Store(StoreError::Unavailable { op: "read_beat", key: "k".into(), reason: "x".into() }));
        assert!(!judge.look("a", &beat(7), t0));
        assert!(!judge.look("a", &failover, t0 + ms(400)));
        // The store is back 5 s later; the owner has not beaten yet.
        assert!(!judge.look("a", &beat(7), t0 + ms(5000)));
        assert!(!judge.look("a", &beat(8), t0 + ms(5250)), "it beats again: alive");
        // Two reads 2 s apart with nothing between them: the window restarts.
        assert!(!judge.look("b", &beat(3), t0));
        assert!(!judge.look("b", &beat(3), t0 + ms(2000)));
        assert!(!judge.look("b", &beat(3), t0 + ms(2500)));
        assert!(judge.look("b", &beat(3), t0 + ms(3000)));
    }

    #[test]
    fn owners_name_their_instance() {
        assert_eq!(instance_of("orders-1a2b#0000beef"), "orders-1a2b");
        assert_eq!(instance_of("plain"), "plain");
    }
}
