//! Adapters: the ports implemented on real systems.

pub mod download;
#[cfg(feature = "aws")]
pub mod dynamodb;
#[cfg(feature = "embedded")]
pub mod fs_objects;
pub mod kling;
pub mod openai;
#[cfg(feature = "aws")]
pub mod s3_objects;
#[cfg(feature = "embedded")]
pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs_queue;
pub mod suno;
mod task_http;
pub mod tls;
