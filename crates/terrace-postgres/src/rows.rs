//! Rows to domain values and back. Every value read back was valid when it
//! was written; one that no longer parses is reported as an internal error.

use crate::db::map_err;
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

pub(crate) const GENERATION_COLUMNS: &str = "id, user_id, request_id, status, address, geocoded_address, \
     lat, lng, error_code, error_message, created_at, started_at, completed_at, deadline_at, attempt, \
     cancel_requested, seq";

const AREA_COLUMNS: &str = "generation_id, area, style, custom_prompt, preservation_strength, status, stage, \
     progress, image_key, error_code, error_message, completed_at, hold_source, hold_state";

/// A generation row without its areas, and its listing position.
fn generation_head(row: &Row) -> Result<(Generation, i64), StoreError> {
    let status: String = row.get("status");
    let address: String = row.get("address");
    let request_id: String = row.get("request_id");
    let geocoded = match (
        row.get::<_, Option<String>>("geocoded_address"),
        row.get::<_, Option<f64>>("lat"),
        row.get::<_, Option<f64>>("lng"),
    ) {
        (Some(formatted_address), Some(lat), Some(lng)) => Some(Geocoded {
            formatted_address,
            location: LatLng::new(lat, lng).ok_or_else(|| corrupt("location"))?,
        }),
        _ => None,
    };
    let attempt: i32 = row.get("attempt");
    let g = Generation {
        id: GenerationId(row.get("id")),
        user_id: UserId(row.get("user_id")),
        request_id: RequestId::parse(&request_id).ok_or_else(|| corrupt("request id"))?,
        status: GenerationStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        address: Address::parse(&address).map_err(corrupt)?,
        geocoded,
        areas: Vec::new(),
        error: failure(row.get("error_code"), row.get("error_message"))?,
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        completed_at: row.get("completed_at"),
        deadline_at: row.get("deadline_at"),
        attempt: u32::try_from(attempt).map_err(corrupt)?,
        cancel_requested: row.get("cancel_requested"),
    };
    Ok((g, row.get("seq")))
}

fn area(row: &Row) -> Result<Area, StoreError> {
    let text = |c: &str| -> String { row.get(c) };
    let kind = AreaKind::parse(&text("area")).map_err(corrupt)?;
    let style = Style::parse(&text("style")).map_err(corrupt)?;
    let custom: Option<String> = row.get("custom_prompt");
    let custom_prompt = match custom {
        Some(c) => CustomPrompt::parse(&c).map_err(corrupt)?,
        None => None,
    };
    let strength = PreservationStrength::parse(row.get("preservation_strength")).map_err(corrupt)?;
    let status = text("status");
    let stage = text("stage");
    let source = text("hold_source");
    let progress: i16 = row.get("progress");
    Ok(Area {
        spec: AreaRequest { area: kind, style, custom_prompt, preservation_strength: strength },
        status: AreaStatus::parse(&status).ok_or_else(|| corrupt(format!("area status {status}")))?,
        stage: AreaStage::parse(&stage).ok_or_else(|| corrupt(format!("stage {stage}")))?,
        progress: u8::try_from(progress).map_err(corrupt)?,
        image_key: row.get("image_key"),
        error: failure(row.get("error_code"), row.get("error_message"))?,
        completed_at: row.get("completed_at"),
        hold_source: CreditSource::parse(&source).ok_or_else(|| corrupt(format!("source {source}")))?,
        hold: hold_parse(&text("hold_state"))?,
    })
}

/// Loads generations with their areas, in the order of `ids`, skipping ids
/// that do not exist. `lock` appends `FOR UPDATE` to both reads.
pub(crate) async fn load(
    c: &impl Sql,
    ids: &[Uuid],
    lock: bool,
) -> Result<Vec<(Generation, i64)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let heads = c
        .query_cached(
            &format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE id = ANY($1){suffix}"),
            &[&ids],
        )
        .await
        .map_err(map_err)?;
    let areas = c
        .query_cached(
            &format!(
                "SELECT {AREA_COLUMNS} FROM generation_areas WHERE generation_id = ANY($1) \
                 ORDER BY generation_id, position{suffix}"
            ),
            &[&ids],
        )
        .await
        .map_err(map_err)?;
    let mut by_id: HashMap<Uuid, (Generation, i64)> = HashMap::with_capacity(heads.len());
    for row in &heads {
        let (g, seq) = generation_head(row)?;
        by_id.insert(g.id.0, (g, seq));
    }
    for row in &areas {
        let id: Uuid = row.get("generation_id");
        if let Some((g, _)) = by_id.get_mut(&id) {
            g.areas.push(area(row)?);
        }
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

pub(crate) async fn load_one(
    c: &impl Sql,
    id: GenerationId,
    lock: bool,
) -> Result<Option<Generation>, StoreError> {
    Ok(load(c, &[id.0], lock).await?.pop().map(|(g, _)| g))
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

pub(crate) const ACCOUNT_COLUMNS: &str = "user_id, trial_credits, token_balance, held, captured";

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
pub(crate) async fn write_area(c: &impl Sql, id: GenerationId, a: &Area) -> Result<(), StoreError> {
    let (code, message) = match &a.error {
        Some(f) => (Some(f.code.as_str()), Some(f.message.as_str())),
        None => (None, None),
    };
    c.execute_cached(
        "UPDATE generation_areas SET status = $3, stage = $4, progress = $5, image_key = $6, \
         error_code = $7, error_message = $8, completed_at = $9, hold_state = $10 \
         WHERE generation_id = $1 AND area = $2",
        &[
            &id.0,
            &a.kind().as_str(),
            &a.status.as_str(),
            &a.stage.as_str(),
            &i16::from(a.progress),
            &a.image_key,
            &code,
            &message,
            &a.completed_at,
            &hold_str(a.hold),
        ],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Writes a generation's changeable columns back (not its areas), and its
/// lease: `None` ends it.
pub(crate) async fn write_generation(
    c: &impl Sql,
    g: &Generation,
    keep_lease: bool,
) -> Result<(), StoreError> {
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
    c.execute_cached(
        sql,
        &[&g.id.0, &g.status.as_str(), &code, &message, &g.completed_at, &g.cancel_requested],
    )
    .await
    .map_err(map_err)?;
    Ok(())
}
