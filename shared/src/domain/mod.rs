//! Pure domain logic: requests, their validation and normalisation, cache keys, pricing and the
//! records the store keeps. Nothing here knows about AWS, SQL or HTTP.

pub mod budget;
pub mod cache_key;
pub mod error;
pub mod image;
pub mod job;
pub mod media;
pub mod music;
pub mod pricing;
pub mod records;
pub mod text;
pub mod tts;
pub mod usage;
pub mod video;

pub use budget::{DailyLimitExceeded, DailySpend};
pub use cache_key::{CacheKey, MediaType, NormalizedMedia};
pub use error::ValidationError;
pub use image::{ImageRequest, NormalizedImageRequest};
pub use job::{Job, JobFailure, JobMessage, JobStatus};
pub use media::GeneratedMedia;
pub use music::{MusicRequest, NormalizedMusicRequest};
pub use pricing::PriceTable;
pub use records::*;
pub use tts::{NormalizedTtsRequest, TtsRequest};
pub use video::{NormalizedVideoRequest, VideoRequest};
