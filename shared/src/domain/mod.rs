//! Pure domain logic: requests, their validation and normalisation, cache keys, pricing and the
//! records the store keeps. Nothing here knows about AWS, SQL or HTTP.

pub mod cache_key;
pub mod error;
pub mod image;
pub mod media;
pub mod pricing;
pub mod records;
pub mod text;
pub mod tts;

pub use cache_key::{CacheKey, MediaType, NormalizedMedia};
pub use error::ValidationError;
pub use image::{ImageRequest, NormalizedImageRequest};
pub use media::GeneratedMedia;
pub use pricing::PriceTable;
pub use records::*;
pub use tts::{NormalizedTtsRequest, TtsRequest};
