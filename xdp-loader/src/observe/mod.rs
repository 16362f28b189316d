//! What the data path did, read from its maps: `dnsteer stats` (text and
//! JSON), Prometheus metrics, `/healthz` and `/readyz`. Observers only read;
//! nothing here writes a map.

mod http;
pub mod metrics;
pub(crate) mod read;
pub mod ready;
pub mod stats;
mod text;

#[cfg(test)]
mod tests;
