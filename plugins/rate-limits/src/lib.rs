//! `rate_limits`: requests per minute, tokens per minute and concurrent requests, per user,
//! per user × model and per model, in this process or shared by replicas through Redis.
//!
//! It serves the admit phase: the core runs it after authentication and the model's access
//! rule, whatever its place in `[[plugins]]`, so refused requests never reach it. The user is
//! the principal (the client address when no auth plugin is configured).
//!
//! Tokens: a request reserves its prompt estimate (body bytes / 4) plus `max_tokens` (or
//! `default_max_tokens`) for each of its `n` choices, at most a whole budget, before it is
//! sent; when the response ends the reservation is settled to the usage the backend
//! reported (the top-level `usage` of a JSON body, or the usage chunk of a stream with
//! `stream_options.include_usage`). A 2xx whose usage cannot be read (a stream without a
//! usage chunk, a body with none) is charged its whole reservation, as is a request the
//! gateway ended after sending it; a backend's own error answer consumes no tokens. No
//! budget ever runs more than one window (a minute) into debt. The stream itself is never
//! altered or delayed.

mod config;
mod gcra;
mod plugin;
pub mod store;

pub use config::LimitsConfig;
pub use gcra::{CheckOutcome, WINDOW};
pub use plugin::{RateLimits, RateLimitsFactory};
