//! What the data path did, read from its maps: `dnsteer stats` (text and
//! JSON) and Prometheus metrics. Observers only read; nothing here writes a map.

mod http;
pub mod metrics;
pub(crate) mod read;
pub mod stats;
mod text;

#[cfg(test)]
mod tests;
