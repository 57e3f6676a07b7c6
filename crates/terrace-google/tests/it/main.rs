//! The Google adapters against the simulator over real loopback HTTP. No
//! paused time: every deadline is short and really waited for.

mod gemini;
mod http2;
mod maps;
mod support;
