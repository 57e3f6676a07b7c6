//! Rows to domain values and back. Every value read back was valid when it
//! was written; one that no longer parses is reported as an internal error.

use crate::db::map_err;
use crate::pipeline::{Batch, p};
use crate::sql::Sql;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{
    Account, Address, Area, AreaKind, AreaRequest, CreditSource, CustomPrompt, ErrorCode, Failure,
    Generation, GenerationId, GenerationStatus, Geocoded, HoldState, LatLng, LedgerEntry, LedgerKind,
    PreservationStrength, RequestId, StoreError, Style, UserId,
};
use tokio_postgres::Row;
use uuid::Uuid;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal { detail: format!("unreadable row: {what}") }
}

pub(crate) fn hold_str(h: HoldState) -> &'static str {
    match h {
        HoldState::Held => "held",
        HoldState::Captured => "captured",
        HoldState::Voided => "voided",
    }
}

fn hold_parse(s: &str) -> Result<HoldState, StoreError> {
    match s {
        "held" => Ok(HoldState::Held),
        "captured" => Ok(HoldState::Captured),
        "voided" => Ok(HoldState::Voided),
        other => Err(corrupt(format!("hold state {other}"))),
    }
}

fn failure(code: Option<String>, message: Option<String>) -> Result<Option<Failure>, StoreError> {
    match (code, message) {
        (Some(c), Some(m)) => {
            let code = ErrorCode::parse(&c).ok_or_else(|| corrupt(format!("error code {c}")))?;
            Ok(Some(Failure::new(code, m)))
        }
        _ => Ok(None),
    }
}

/// A generation and its areas in one read: the generation's columns (17,
/// from index 0), then one area's (13, from [`AREA_AT`]), one row per area
/// in position order (a generation without areas, which no create makes,
/// comes as one row of nulls there).
macro_rules! load_sql {
    ($which:literal) => {
        concat!("SELECT g.id, g.user_id, g.request_id, g.status, g.address, g.geocoded_address, g.lat, g.lng, \
         g.error_code, g.error_message, g.created_at, g.started_at, g.completed_at, g.deadline_at, g.attempt, \
         g.cancel_requested, g.seq, \
         a.area, a.style, a.custom_prompt, a.preservation_strength, a.status, a.stage, a.progress, a.image_key, \
         a.error_code, a.error_message, a.completed_at, a.hold_source, a.hold_state \
         FROM generations g LEFT JOIN generation_areas a ON a.generation_id = g.id \
         WHERE ", $which, " ORDER BY g.id, a.position")
    };
}
pub(crate) const LOAD: &str = load_sql!("g.id = ANY($1)");
/// One generation: an equality, so that the server settles on one generic
/// plan for the prepared statement instead of planning it at every call (as
/// it does for `= ANY($1)`, whose array it cannot size in advance).
pub(crate) const LOAD_ONE: &str = load_sql!("g.id = $1");
/// Locks the generations' rows, in one order. Their areas are written only
/// under that lock (every write locks its generation first), so theirs need
/// none; and the read that follows is a statement of its own, so that it
/// sees what a transaction that held the lock before committed (a locking
/// join would re-check the generation's row but not the areas').
pub(crate) const LOCK: &str = "SELECT 1 FROM generations WHERE id = ANY($1) ORDER BY id FOR UPDATE";
/// Where an area's columns start in a [`LOAD`] row.
const AREA_AT: usize = 17;

/// A generation row without its areas, and its listing position.
fn generation_head(row: &Row) -> Result<(Generation, i64), StoreError> {
    let status: &str = row.get(3);
    let address: &str = row.get(4);
    let request_id: &str = row.get(2);
    let geocoded =
        match (row.get::<_, Option<String>>(5), row.get::<_, Option<f64>>(6), row.get::<_, Option<f64>>(7)) {
            (Some(formatted_address), Some(lat), Some(lng)) => Some(Geocoded {
                formatted_address,
                location: LatLng::new(lat, lng).ok_or_else(|| corrupt("location"))?,
            }),
            _ => None,
        };
    let attempt: i32 = row.get(14);
    let g = Generation {
        id: GenerationId(row.get(0)),
        user_id: UserId(row.get(1)),
        request_id: RequestId::parse(request_id).ok_or_else(|| corrupt("request id"))?,
        status: GenerationStatus::parse(status).ok_or_else(|| corrupt(format!("status {status}")))?,
        address: Address::parse(address).map_err(corrupt)?,
        geocoded,
        areas: Vec::new(),
        error: failure(row.get(8), row.get(9))?,
        created_at: row.get(10),
        started_at: row.get(11),
        completed_at: row.get(12),
        deadline_at: row.get(13),
        attempt: u32::try_from(attempt).map_err(corrupt)?,
        cancel_requested: row.get(15),
    };
    Ok((g, row.get(16)))
}

/// The area whose columns start at `at`.
fn area(row: &Row, at: usize) -> Result<Area, StoreError> {
    let text = |i: usize| -> &str { row.get(at + i) };
    let kind = AreaKind::parse(text(0)).map_err(corrupt)?;
    let style = Style::parse(text(1)).map_err(corrupt)?;
    let custom_prompt = match row.get::<_, Option<&str>>(at + 2) {
        Some(c) => CustomPrompt::parse(c).map_err(corrupt)?,
        None => None,
    };
    let strength = PreservationStrength::parse(row.get(at + 3)).map_err(corrupt)?;
    let (status, stage, source) = (text(4), text(5), text(11));
    let progress: i16 = row.get(at + 6);
    Ok(Area {
        spec: AreaRequest { area: kind, style, custom_prompt, preservation_strength: strength },
        status: AreaStatus::parse(status).ok_or_else(|| corrupt(format!("area status {status}")))?,
        stage: AreaStage::parse(stage).ok_or_else(|| corrupt(format!("stage {stage}")))?,
        progress: u8::try_from(progress).map_err(corrupt)?,
        image_key: row.get(at + 7),
        error: failure(row.get(at + 8), row.get(at + 9))?,
        completed_at: row.get(at + 10),
        hold_source: CreditSource::parse(source).ok_or_else(|| corrupt(format!("source {source}")))?,
        hold: hold_parse(text(12))?,
    })
}

/// Loads generations with their areas, in the order of `ids`, skipping ids
/// that do not exist, in one statement; `lock` first takes the generations'
/// rows `FOR UPDATE` ([`LOCK`]).
pub(crate) async fn load(
    c: &impl Sql,
    ids: &[Uuid],
    lock: bool,
) -> Result<Vec<(Generation, i64)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    if lock {
        c.query_cached(LOCK, &[&ids]).await.map_err(map_err)?;
    }
    let rows = c.query_cached(LOAD, &[&ids]).await.map_err(map_err)?;
    loaded(ids, &rows)
}

/// The generations of a [`LOAD`]'s rows, in the order of `ids`, skipping
/// ids that do not exist.
pub(crate) fn loaded(ids: &[Uuid], rows: &[Row]) -> Result<Vec<(Generation, i64)>, StoreError> {
    let mut by_id: HashMap<Uuid, (Generation, i64)> = HashMap::with_capacity(ids.len());
    for row in rows {
        let id: Uuid = row.get(0);
        let entry = match by_id.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(generation_head(row)?),
        };
        add_area(&mut entry.0, row)?;
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// The area a [`LOAD`] row carries, if it carries one.
fn add_area(g: &mut Generation, row: &Row) -> Result<(), StoreError> {
    if row.get::<_, Option<&str>>(AREA_AT).is_some() {
        g.areas.push(area(row, AREA_AT)?);
    }
    Ok(())
}

pub(crate) async fn load_one(
    c: &impl Sql,
    id: GenerationId,
    lock: bool,
) -> Result<Option<Generation>, StoreError> {
    if lock {
        c.query_cached(LOCK, &[&[id.0].as_slice()]).await.map_err(map_err)?;
    }
    let rows = c.query_cached(LOAD_ONE, &[&id.0]).await.map_err(map_err)?;
    loaded_one(&rows)
}

/// The generation of a [`LOAD_ONE`]'s rows, if it exists.
pub(crate) fn loaded_one(rows: &[Row]) -> Result<Option<Generation>, StoreError> {
    let Some(first) = rows.first() else { return Ok(None) };
    let (mut g, _) = generation_head(first)?;
    for row in rows {
        add_area(&mut g, row)?;
    }
    Ok(Some(g))
}

pub(crate) fn account(row: &Row) -> Result<Account, StoreError> {
    let n = |c: &str| -> Result<u64, StoreError> { u64::try_from(row.get::<_, i64>(c)).map_err(corrupt) };
    Ok(Account {
        user_id: UserId(row.get("user_id")),
        trial_credits: n("trial_credits")?,
        token_balance: n("token_balance")?,
        held: n("held")?,
        captured: n("captured")?,
    })
}

/// The columns [`account`] reads, as a literal for `concat!`, so that
/// statements are written once at compile time rather than at every call.
macro_rules! account_columns {
    () => {
        "user_id, trial_credits, token_balance, held, captured"
    };
}
pub(crate) use account_columns;

pub(crate) fn ledger_entry(row: &Row) -> Result<LedgerEntry, StoreError> {
    let kind: String = row.get("kind");
    let source: String = row.get("source");
    let area: Option<String> = row.get("area");
    let amount: i64 = row.get("amount");
    let created_at: DateTime<Utc> = row.get("created_at");
    Ok(LedgerEntry {
        id: row.get("id"),
        user_id: UserId(row.get("user_id")),
        kind: LedgerKind::parse(&kind).ok_or_else(|| corrupt(format!("ledger kind {kind}")))?,
        amount: u64::try_from(amount).map_err(corrupt)?,
        source: CreditSource::parse(&source).ok_or_else(|| corrupt(format!("source {source}")))?,
        generation_id: row.get::<_, Option<Uuid>>("generation_id").map(GenerationId),
        area: area.map(|a| AreaKind::parse(&a)).transpose().map_err(corrupt)?,
        reference: row.get("reference"),
        created_at,
    })
}

pub(crate) const LEDGER_COLUMNS: &str =
    "id, user_id, kind, amount, source, generation_id, area, reference, created_at";

/// Writes an area's changeable columns back.
pub(crate) fn push_area<'a>(batch: &mut Batch<'a>, id: GenerationId, a: &'a Area) {
    let (code, message) = match &a.error {
        Some(f) => (Some(f.code.as_str()), Some(f.message.as_str())),
        None => (None, None),
    };
    batch.push(
        "UPDATE generation_areas SET status = $3, stage = $4, progress = $5, image_key = $6, \
         error_code = $7, error_message = $8, completed_at = $9, hold_state = $10 \
         WHERE generation_id = $1 AND area = $2",
        vec![
            p(id.0),
            p(a.kind().as_str()),
            p(a.status.as_str()),
            p(a.stage.as_str()),
            p(i16::from(a.progress)),
            p(&a.image_key),
            p(code),
            p(message),
            p(a.completed_at),
            p(hold_str(a.hold)),
        ],
    );
}

/// Writes a generation's changeable columns back (not its areas), and its
/// lease: `None` ends it.
pub(crate) fn push_generation<'a>(batch: &mut Batch<'a>, g: &'a Generation, keep_lease: bool) {
    let (code, message) = match &g.error {
        Some(f) => (Some(f.code.as_str()), Some(f.message.as_str())),
        None => (None, None),
    };
    let sql = if keep_lease {
        "UPDATE generations SET status = $2, error_code = $3, error_message = $4, completed_at = $5, \
         cancel_requested = $6 WHERE id = $1"
    } else {
        "UPDATE generations SET status = $2, error_code = $3, error_message = $4, completed_at = $5, \
         cancel_requested = $6, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1"
    };
    batch.push(
        sql,
        vec![p(g.id.0), p(g.status.as_str()), p(code), p(message), p(g.completed_at), p(g.cancel_requested)],
    );
}
