//! Last use: when each image (name) and blob was last used, and how often, in the `uses`
//! table. Prune removes the least recently used first.
//!
//! Work that writes anyway (pull, import: their batch commit) records its uses exactly, in
//! its own transaction. Reads (export, `image check`, `content cat`, reads through the
//! cache) must not become write transactions, so [`Store::record_use`] only notes the use in
//! memory; the notes are written
//! - with the next batch commit of this process (no transaction of their own),
//! - when a note is older than [`USE_GRANULARITY`] at the next `record_use`, and
//! - when the last handle on the store is dropped (the end of a CLI command),
//!
//! in the two latter cases only if some item's recorded last use is at least
//! [`USE_GRANULARITY`] older than the new one (or it has none). So a command that reads the
//! same image again and again writes at most once per item per five minutes; in exchange
//! a last use can be up to that much older than the truth, and uses that are dropped with
//! such a skipped write are not counted. A read-only store records nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::names::AsName;
use crate::store::Store;
use crate::store::records::Nanos;
use crate::store::schema::USES;

/// How stale a recorded last use may get before a read writes a newer one.
pub const USE_GRANULARITY: Duration = Duration::from_secs(5 * 60);

/// Something whose use is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Used {
    /// An image, by its normalised name.
    Image(String),
    /// A blob.
    Content(Digest),
}

impl Used {
    /// The image `name`, normalised with docker's rules.
    pub fn image(name: impl AsName) -> Result<Used> {
        Ok(Used::Image(name.as_name()?.to_string()))
    }

    fn key(&self) -> (&'static str, String) {
        match self {
            Used::Image(n) => ("image", n.clone()),
            Used::Content(d) => ("content", d.to_string()),
        }
    }
}

/// When something was last used, and how many uses were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LastUse {
    /// The last recorded use.
    pub at: SystemTime,
    /// Uses recorded (see the module docs for what is not counted).
    pub count: u64,
}

/// Uses noted in memory and not yet written.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    items: HashMap<Used, (u64, u64)>,
    since: Option<Instant>,
}

impl Pending {
    fn note(&mut self, item: Used, at: Nanos) {
        let e = self.items.entry(item).or_insert((0, 0));
        e.0 = e.0.max(at.0);
        e.1 += 1;
        self.since.get_or_insert_with(Instant::now);
    }
}

impl Store {
    /// Notes that `items` were used now, in memory; see the module docs for when the notes
    /// reach the store. Never fails and never waits for a transaction, except that a note
    /// older than [`USE_GRANULARITY`] makes this call write the due ones (an error then is
    /// logged, not returned).
    pub fn record_use<I: IntoIterator<Item = Used>>(&self, items: I) {
        if self.is_read_only() {
            return;
        }
        let now = Nanos::now();
        let due = {
            let mut p = self.inner.uses.lock();
            for item in items {
                p.note(item, now);
            }
            p.since.is_some_and(|s| s.elapsed() >= USE_GRANULARITY)
        };
        if due && let Err(e) = self.flush_uses_due() {
            tracing::warn!(error = %e, "could not record last uses");
        }
    }

    /// Records that `items` were used at `at`, now and durably (one write transaction),
    /// together with every note still in memory. For callers that know of uses the store
    /// cannot see (a build that used an image's unpacked layers, say) and for tests.
    pub fn record_use_at(&self, items: &[Used], at: SystemTime) -> Result<()> {
        let txn = self.write_txn("record last uses")?;
        self.write_uses_in(&txn, items, Nanos::from(at))?;
        txn.commit().map_err(|e| Error::db("commit last uses", e))
    }

    /// Writes every use noted in memory now, due or not.
    pub fn flush_uses(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let txn = self.write_txn("record last uses")?;
        self.write_uses_in(&txn, &[], Nanos::now())?;
        txn.commit().map_err(|e| Error::db("commit last uses", e))
    }

    /// Writes the noted uses if any is due (see the module docs).
    fn flush_uses_due(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.inner.uses.lock());
        match self.writable("record last uses") {
            Ok(db) => flush_due(db, pending, self.inner.generation.as_ref()),
            Err(_) => Ok(()),
        }
    }

    /// The last recorded use of `item`, `None` when none was recorded (the item may still
    /// exist: prune then takes the time its record was last written).
    pub fn last_use(&self, item: &Used) -> Result<Option<LastUse>> {
        let txn = self.read_txn()?;
        let table = match txn.open_table(USES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(Error::db("open the uses table", e)),
        };
        let (kind, id) = item.key();
        Ok(table
            .get((kind, id.as_str()))
            .map_err(|e| Error::db("read a last use", e))?
            .map(|v| {
                let (ns, count) = v.value();
                LastUse {
                    at: Nanos(ns).into(),
                    count,
                }
            }))
    }

    /// Every recorded use (a rebuild carries them over).
    pub(crate) fn all_uses(&self) -> Result<Vec<(Used, LastUse)>> {
        let txn = self.read_txn()?;
        let table = match txn.open_table(USES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Error::db("open the uses table", e)),
        };
        let mut out = Vec::new();
        for (id, u) in all_in(&table, "image")? {
            out.push((Used::Image(id), u));
        }
        for (id, u) in all_in(&table, "content")? {
            if let Ok(d) = Digest::parse(&id) {
                out.push((Used::Content(d), u));
            }
        }
        Ok(out)
    }

    /// Writes `uses` as they are (times and counts), in one transaction.
    pub(crate) fn restore_uses(&self, uses: &[(Used, LastUse)]) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let txn = self.write_txn("restore last uses")?;
        {
            let mut table = txn
                .open_table(USES)
                .map_err(|e| Error::db("open the uses table", e))?;
            for (item, u) in uses {
                let (kind, id) = item.key();
                table
                    .insert((kind, id.as_str()), (Nanos::from(u.at).0, u.count))
                    .map_err(|e| Error::db("restore a last use", e))?;
            }
        }
        txn.commit().map_err(|e| Error::db("commit last uses", e))
    }

    /// Records `extra` as used at `at`, and every note still in memory, inside `txn`.
    pub(crate) fn write_uses_in(
        &self,
        txn: &WriteTransaction,
        extra: &[Used],
        at: Nanos,
    ) -> Result<bool> {
        let mut pending = std::mem::take(&mut *self.inner.uses.lock());
        for item in extra {
            pending.note(item.clone(), at);
        }
        write_pending(txn, &pending)?;
        Ok(!pending.items.is_empty())
    }
}

/// Drops the recorded use of `item` inside `txn` (the item is being removed).
pub(crate) fn forget_in(txn: &WriteTransaction, kind: &str, id: &str) -> Result<()> {
    txn.open_table(USES)
        .map_err(|e| Error::db("open the uses table", e))?
        .remove((kind, id))
        .map_err(|e| Error::db("forget a last use", e))?;
    Ok(())
}

/// Every recorded use of `kind`, by id.
pub(crate) fn all_in(
    table: &impl ReadableTable<(&'static str, &'static str), (u64, u64)>,
    kind: &str,
) -> Result<HashMap<String, LastUse>> {
    let mut out = HashMap::new();
    for entry in table
        .range((kind, "")..)
        .map_err(|e| Error::db("read last uses", e))?
    {
        let (k, v) = entry.map_err(|e| Error::db("read last uses", e))?;
        let (k_kind, id) = k.value();
        if k_kind != kind {
            break;
        }
        let (ns, count) = v.value();
        out.insert(
            id.to_owned(),
            LastUse {
                at: Nanos(ns).into(),
                count,
            },
        );
    }
    Ok(out)
}

fn write_pending(txn: &WriteTransaction, pending: &Pending) -> Result<()> {
    if pending.items.is_empty() {
        return Ok(());
    }
    let mut table = txn
        .open_table(USES)
        .map_err(|e| Error::db("open the uses table", e))?;
    for (item, (ns, count)) in &pending.items {
        let (kind, id) = item.key();
        let old = table
            .get((kind, id.as_str()))
            .map_err(|e| Error::db("read a last use", e))?
            .map(|v| v.value())
            .unwrap_or((0, 0));
        table
            .insert((kind, id.as_str()), (old.0.max(*ns), old.1 + count))
            .map_err(|e| Error::db("record a last use", e))?;
    }
    Ok(())
}

/// Writes `pending` in a transaction of its own if any of it is due: an item without a
/// recorded use, or whose recorded use is [`USE_GRANULARITY`] older than the noted one.
pub(crate) fn flush_due(
    db: &Database,
    pending: Pending,
    generation: Option<&crate::store::snapshot::Generation>,
) -> Result<()> {
    if pending.items.is_empty() {
        return Ok(());
    }
    let granularity = USE_GRANULARITY.as_nanos() as u64;
    let due = {
        let txn = db
            .begin_read()
            .map_err(|e| Error::db("begin a read transaction", e))?;
        match txn.open_table(USES) {
            Ok(table) => {
                let mut due = false;
                for (item, (ns, _)) in &pending.items {
                    let (kind, id) = item.key();
                    let recorded = table
                        .get((kind, id.as_str()))
                        .map_err(|e| Error::db("read a last use", e))?
                        .map(|v| v.value().0);
                    if recorded.is_none_or(|r| r.saturating_add(granularity) <= *ns) {
                        due = true;
                        break;
                    }
                }
                due
            }
            Err(redb::TableError::TableDoesNotExist(_)) => true,
            Err(e) => return Err(Error::db("open the uses table", e)),
        }
    };
    if !due {
        return Ok(());
    }
    let txn = db
        .begin_write()
        .map_err(|e| Error::db("begin a write transaction", e))?;
    write_pending(&txn, &pending)?;
    txn.commit().map_err(|e| Error::db("commit last uses", e))?;
    if let Some(g) = generation {
        g.bump();
    }
    Ok(())
}
