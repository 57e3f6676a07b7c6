//! The API in-process on a real socket, over the in-memory store (wrapped so
//! a test can stall it).

mod billing;
mod edge;
mod events;
mod fair;
mod ops;
mod support;
mod wire;
