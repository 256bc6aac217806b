//! End-to-end tests over real HTTP: `mediactl serve`'s wiring on a loopback port, the provider
//! simulator, SQLite and files in a temporary directory.

mod cache;
mod compat;
mod credits;
mod errors;
mod jobs;
mod misses;
