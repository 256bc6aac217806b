//! Ports: the small traits the application needs from the outside world. Adapters implement them.

pub mod objects;
pub mod providers;
pub mod queue;
pub mod store;

pub use objects::{ObjectError, ObjectStore};
pub use providers::{
    ImageProvider, MusicProvider, ProviderError, SpeechProvider, TaskProvider, TaskState,
    VideoProvider,
};
pub use queue::{JobQueue, QueueError};
pub use store::*;
