//! End-to-end tests over real HTTP: `mediactl serve`'s wiring on a loopback port, the provider
//! simulator, SQLite and files in a temporary directory.

mod budget;
mod cache;
mod compat;
mod controls;
mod credits;
mod errors;
mod jobs;
mod misses;
