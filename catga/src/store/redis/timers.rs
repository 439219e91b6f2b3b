//! The Redis store's timer queues (see `Store::timer_put`). A queue
//! `catga:{scope}:name` is three native Redis keys beside it: `…:due` (a
//! sorted set of waiting item ids by due time, epoch ms), `…:taken` (a
//! sorted set of the ids being delivered, by when their taking lapses) and
//! `…:items` (a hash of the items by id); its five scripts touch only those
//! three, in one slot.

use ::redis::ScriptInvocation;

use super::RedisStore;
use crate::store::lua::{SCRIPTS, unexpected};
use crate::store::{Due, Key, StoreError};

impl RedisStore {
    /// A timer queue's keys, in the queue's scope: the waiting items (a
    /// sorted set by due time), the taken ones (by when the taking lapses),
    /// and the items (a hash by id).
    fn timer_keys<'a>(inv: &mut ScriptInvocation<'a>, queue: &Key) {
        let stored = queue.stored();
        inv.key(format!("{stored}:due")).key(format!("{stored}:taken")).key(format!("{stored}:items"));
    }

    pub(in crate::store) async fn timer_put(
        &self,
        queue: &Key,
        id: &str,
        due: u64,
        item: &[u8],
        replace: bool,
    ) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.timer_put.prepare_invoke();
        Self::timer_keys(&mut inv, queue);
        inv.arg(id).arg(due).arg(item).arg(if replace { "1" } else { "0" });
        let put: bool = self.eval("timer_put", queue, &inv).await?;
        self.confirmed("timer_put", queue, put).await
    }

    pub(in crate::store) async fn timers_due(
        &self,
        queue: &Key,
        upto: u64,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Due>, StoreError> {
        let mut inv = SCRIPTS.timers_due.prepare_invoke();
        Self::timer_keys(&mut inv, queue);
        inv.arg(upto).arg(now).arg(limit);
        let flat: Vec<String> = self.eval("timers_due", queue, &inv).await?;
        flat.chunks(2)
            .map(|pair| match pair {
                [id, score] => match score.parse::<f64>() {
                    Ok(at) if at >= 0.0 => Ok(Due { id: id.clone(), at: at as u64 }),
                    _ => Err(unexpected("timers_due", queue, pair)),
                },
                _ => Err(unexpected("timers_due", queue, pair)),
            })
            .collect()
    }

    pub(in crate::store) async fn timer_take(
        &self,
        queue: &Key,
        id: &str,
        seen: u64,
        until: u64,
        now: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut inv = SCRIPTS.timer_take.prepare_invoke();
        Self::timer_keys(&mut inv, queue);
        inv.arg(id).arg(seen).arg(until).arg(now);
        let item: Option<Vec<u8>> = self.eval("timer_take", queue, &inv).await?;
        if item.is_some() {
            self.replicated("timer_take", queue).await?;
        }
        Ok(item)
    }

    pub(in crate::store) async fn timer_end(
        &self,
        queue: &Key,
        id: &str,
        until: u64,
        again: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.timer_end.prepare_invoke();
        Self::timer_keys(&mut inv, queue);
        inv.arg(id).arg(until).arg(again.map(|a| a.to_string()).unwrap_or_default());
        let ended: bool = self.eval("timer_end", queue, &inv).await?;
        self.confirmed("timer_end", queue, ended).await
    }

    pub(in crate::store) async fn timer_cancel(&self, queue: &Key, id: &str, now: u64) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.timer_cancel.prepare_invoke();
        Self::timer_keys(&mut inv, queue);
        inv.arg(id).arg(now);
        let cancelled: bool = self.eval("timer_cancel", queue, &inv).await?;
        self.confirmed("timer_cancel", queue, cancelled).await
    }
}
