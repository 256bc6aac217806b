//! Request bodies already made into jobs, kept in memory: a body is parsed, normalised (NFC),
//! priced and hashed into its cache key once, and a client sending the same bytes again (what
//! repeated requests are) gets the same job from memory. That work is a pure function of the
//! bytes, the price table and the providers, all fixed for the life of the process, so a
//! remembered job is always the one the body would make again.

use super::MediaJob;
use crate::domain::MediaType;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The most bodies remembered; when full, all are forgotten (the hot ones come back at once).
const CAPACITY: usize = 2048;

/// The largest body remembered: requests people repeat are short; a long one costs memory for
/// little (its parse is a small part of its cost).
const MAX_BODY: usize = 1024;

/// A request ready to be served: its cache key, price, parameters and how a miss generates it.
#[derive(Clone)]
pub struct PreparedRequest(pub(super) Arc<MediaJob>);

#[derive(Default)]
pub(super) struct PreparedRequests {
    jobs: RwLock<HashMap<(MediaType, Bytes), PreparedRequest>>,
}

impl PreparedRequests {
    pub(super) fn get(&self, media_type: MediaType, body: &Bytes) -> Option<PreparedRequest> {
        if body.len() > MAX_BODY {
            return None;
        }
        let jobs = self.jobs.read().unwrap_or_else(|e| e.into_inner());
        // The key's Bytes is a reference count, not a copy.
        jobs.get(&(media_type, body.clone())).cloned()
    }

    pub(super) fn remember(&self, media_type: MediaType, body: &Bytes, job: &PreparedRequest) {
        if body.len() > MAX_BODY {
            return;
        }
        let mut jobs = self.jobs.write().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= CAPACITY {
            jobs.clear();
        }
        // Its own copy: the body may be a slice of a larger buffer the memo must not keep.
        jobs.insert(
            (media_type, Bytes::copy_from_slice(body)),
            PreparedRequest::clone(job),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TtsRequest;
    use crate::service::Generator;

    fn job(text: &str) -> PreparedRequest {
        let norm = serde_json::from_value::<TtsRequest>(serde_json::json!({ "text": text }))
            .unwrap()
            .normalize()
            .unwrap();
        PreparedRequest(Arc::new(MediaJob::of(
            &norm,
            3,
            "openai",
            Generator::Speech(norm.clone()),
        )))
    }

    fn body(text: &str) -> Bytes {
        Bytes::from(format!("{{\"text\":\"{text}\"}}"))
    }

    #[test]
    fn a_body_is_found_by_its_bytes_and_media_type() {
        let memo = PreparedRequests::default();
        let hello = job("hello");
        assert!(memo.get(MediaType::Tts, &body("hello")).is_none());
        memo.remember(MediaType::Tts, &body("hello"), &hello);
        let found = memo
            .get(MediaType::Tts, &body("hello"))
            .expect("remembered");
        assert!(Arc::ptr_eq(&found.0, &hello.0));
        // The same bytes sent to another route, or other bytes, are not this job.
        assert!(memo.get(MediaType::Image, &body("hello")).is_none());
        assert!(memo.get(MediaType::Tts, &body("hello ")).is_none());
        assert!(memo.get(MediaType::Tts, &body("Hello")).is_none());
    }

    #[test]
    fn long_bodies_are_not_kept_and_a_full_memo_starts_over() {
        let memo = PreparedRequests::default();
        let long = body(&"a".repeat(MAX_BODY));
        memo.remember(MediaType::Tts, &long, &job("a"));
        assert!(memo.get(MediaType::Tts, &long).is_none());

        for i in 0..CAPACITY {
            memo.remember(MediaType::Tts, &body(&i.to_string()), &job("x"));
        }
        assert!(memo.get(MediaType::Tts, &body("0")).is_some());
        memo.remember(MediaType::Tts, &body("one more"), &job("x"));
        assert!(
            memo.get(MediaType::Tts, &body("0")).is_none(),
            "cleared when full"
        );
        assert!(memo.get(MediaType::Tts, &body("one more")).is_some());
        assert_eq!(memo.jobs.read().unwrap().len(), 1);
    }
}
