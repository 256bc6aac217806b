//! `mediactl`: the whole API in one local process on embedded parts (SQLite, local files, the
//! provider simulator), its completion worker alone (for functions run locally), plus user and
//! credit administration, and a load generator (bench).

pub mod bench;
pub mod logs;
pub mod observe;
pub mod providers;
pub mod serve;
pub mod stats;

pub use serve::{ServeConfig, ServeError, Server};
