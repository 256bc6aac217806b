//! The media cache: pure domain logic, the ports it needs, the adapters that implement them, the
//! application service that runs the cache flows, and the HTTP layer in front of it.

pub mod adapters;
pub mod clock;
pub mod domain;
pub mod http;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod ports;
pub mod service;
pub mod telemetry;

pub use clock::{Clock, ManualClock, SystemClock};
