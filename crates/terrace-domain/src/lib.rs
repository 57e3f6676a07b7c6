//! Terrace's domain: what a generation is and the rules it lives by.
//!
//! - [`input`]: parsed inputs. Every constructor rejects bad values, so past the
//!   edge nothing re-checks ("parse, don't validate").
//! - [`state`]: the generation and area state machines and the [`state::Generation`]
//!   record every port speaks in. Illegal transitions are rejected.
//! - [`credits`]: accounts, holds, captures and voids, and the conservation check
//!   `credited = available + held + captured`.
//! - [`billing`]: the packages and the plan, a user's subscription, and the
//!   rules by which Stripe's events change it.
//! - [`rules`]: what every store applies to leases, claims, the sweep,
//!   fenced writes, resolved holds and paging, written once.
//! - [`prompt`]: a design prompt for every area × style.
//! - [`policy`]: [`policy::Policies`], every deadline, the retry/backoff policy and the
//!   lock policy, built explicitly by the caller (there is no `Default`).
//! - [`error`]: the error taxonomy. Every error knows whether it is retryable and
//!   which contract error code it becomes.
//!
//! This crate does no I/O and depends on no async runtime.

pub mod billing;
pub mod credits;
pub mod error;
pub mod geo;
pub mod input;
pub mod policy;
pub mod prompt;
pub mod rules;
pub mod state;

pub use credits::{Account, CreditSource, HoldState, LedgerEntry, LedgerKind};
pub use error::{
    BlobError, Classify, CreateError, DesignError, ErrorCode, Failure, GeocodeError, ImageryError,
    LedgerError, StoreError, TimeoutKind, UpstreamError,
};
pub use geo::LatLng;
pub use input::{
    Address, AreaKind, AreaRequest, CreditReference, CustomPrompt, GenerationId, GenerationRequest,
    GrantAmount, IdempotencyKey, InvalidInput, PreservationStrength, RequestId, Style, UserId,
};
pub use policy::{DbPolicy, LeasePolicy, LockPolicy, Policies, PolicyError, RetryPolicy};
pub use state::{
    Area, AreaStage, AreaStatus, Created, Generation, GenerationStatus, Geocoded, IllegalTransition,
};
