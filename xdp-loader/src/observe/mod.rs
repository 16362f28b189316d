//! What the data path did, read from its maps: `dnsteer stats` (text and
//! JSON) and Prometheus metrics. Observers only read; nothing here writes a map.

pub mod metrics;
pub mod stats;
