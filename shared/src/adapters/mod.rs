//! Adapters: the ports implemented on real systems.

#[cfg(feature = "embedded")]
pub mod fs_objects;
pub mod openai;
#[cfg(feature = "embedded")]
pub mod sqlite;
