//! The JSON of Terrace's HTTP API (CONTRACT §4–§7), once: every request body
//! and every answer as a serde type that the server (terrace-api) writes or
//! reads and that clients (terrace-client) read or write. No I/O, no
//! conversion from the domain's records: the server builds these from what
//! it stores.
//!
//! - [`generation`]: the create request ([`CreateRequest`], [`AreaSpec`]) and
//!   the generation as the API shows it ([`Generation`], [`AreaView`],
//!   [`Location`], [`ErrorInfo`]).
//! - [`account`]: [`Account`] with its [`SubscriptionSummary`],
//!   [`Transaction`]s and [`Page`]s, the admin's [`GrantRequest`] and
//!   [`TaskView`].
//! - [`billing`]: the [`Catalogue`], Checkout and the portal, the
//!   [`Subscription`] and Stripe's [`WebhookReceipt`].
//! - [`problem`]: the `application/problem+json` body, [`Problem`] with its
//!   [`FieldError`]s.
//!
//! How values look is said here and nowhere else: the contract's names
//! (`front_yard`, `partially_completed`) are the domain's own `as_str`, read
//! back with its `parse`, never its serde derives; timestamps are RFC 3339
//! in UTC with `Z` ([`time`]). Request bodies refuse unknown fields; answers
//! are read leniently, so that a client keeps working when the server adds
//! a field.

pub mod account;
pub mod billing;
pub mod generation;
mod names;
pub mod problem;
pub mod time;

pub use account::{Account, GrantRequest, Page, SubscriptionSummary, TaskView, Transaction};
pub use billing::{
    CancelSubscriptionRequest, Catalogue, CheckoutRequest, CheckoutSession, Package, Plan, PortalSession,
    SubscribeRequest, Subscription, WebhookReceipt,
};
pub use generation::{AreaSpec, AreaView, CreateRequest, ErrorInfo, Generation, Location};
pub use problem::{FieldError, Problem};
