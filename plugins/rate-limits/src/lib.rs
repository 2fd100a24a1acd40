//! `rate_limits`: requests per minute, tokens per minute and concurrent requests, per user,
//! per user × model and per model, in this process or shared by replicas through Redis.
//!
//! Place it after the auth plugins: the user is the principal they establish (the client
//! address when no auth plugin is configured).
//!
//! Tokens: a request reserves its prompt estimate (body bytes / 4) plus `max_tokens` (or
//! `default_max_tokens`) before it is sent; when the response ends the reservation is
//! settled to the usage the backend reported (`usage` in a JSON body, or the usage chunk of
//! a stream with `stream_options.include_usage`). A stream without a usage chunk is counted
//! as the prompt estimate plus one token per content event; a response that is not 2xx
//! consumes no tokens. The stream itself is never altered or delayed.

mod config;
mod gcra;
mod plugin;
pub mod store;

pub use config::LimitsConfig;
pub use gcra::{Verdict, WINDOW};
pub use plugin::{RateLimits, RateLimitsFactory};
