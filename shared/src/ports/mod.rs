//! Ports: the small traits the application needs from the outside world. Adapters implement them.

pub mod objects;
pub mod providers;
pub mod store;

pub use objects::{ObjectError, ObjectStore};
pub use providers::{ImageProvider, ProviderError, SpeechProvider};
pub use store::*;
