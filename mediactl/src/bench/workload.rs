//! The workload of `mediactl bench`: which distinct requests exist, and in which order they are
//! sent. Everything here is a pure function of the flags and the seed.

use super::BenchError;
use bytes::Bytes;
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand_distr::Zipf;
use serde::Serialize;
use serde_json::json;
use std::fmt;
use std::str::FromStr;

/// A media type the bench can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// `POST /api/v1/media/tts`.
    Tts,
    /// `POST /api/v1/media/image`.
    Image,
    /// `POST /api/v1/media/music` (a 202 job on a miss).
    Music,
    /// `POST /api/v1/media/video` (a 202 job on a miss).
    Video,
}

impl MediaKind {
    /// Every kind, in the order the report lists them.
    pub const ALL: [MediaKind; 4] = [
        MediaKind::Tts,
        MediaKind::Image,
        MediaKind::Music,
        MediaKind::Video,
    ];

    /// The name used in `--mix` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Tts => "tts",
            MediaKind::Image => "image",
            MediaKind::Music => "music",
            MediaKind::Video => "video",
        }
    }

    /// The route, relative to the API's base URL.
    pub fn path(self) -> &'static str {
        match self {
            MediaKind::Tts => "/api/v1/media/tts",
            MediaKind::Image => "/api/v1/media/image",
            MediaKind::Music => "/api/v1/media/music",
            MediaKind::Video => "/api/v1/media/video",
        }
    }

    /// Position in [`MediaKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The body of this kind's `index`-th distinct request of the run with `seed`. Each is as
    /// cheap as the API allows: a short text (the smallest speech price), a 256x256 dall-e-2
    /// image, one Suno task, a 5 s standard-mode video. The seed and the index are in the text,
    /// so every distinct request has its own cache key, and another seed starts on a cold cache.
    pub fn body(self, seed: u64, index: u32) -> Bytes {
        let text = format!("mediactl bench {seed} {} {index}", self.name());
        let body = match self {
            MediaKind::Tts => json!({"text": text, "model": "tts-1", "voice": "nova"}),
            MediaKind::Image => json!({"prompt": text, "model": "dall-e-2", "size": "256x256"}),
            MediaKind::Music => json!({"prompt": text}),
            MediaKind::Video => json!({"prompt": text, "mode": "std", "duration": 5}),
        };
        Bytes::from(body.to_string())
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MediaKind {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MediaKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                BenchError::flag(
                    "--mix",
                    format!("unknown media type `{s}` (expected tts, image, music or video)"),
                )
            })
    }
}

/// The share of requests of each media type: relative weights, e.g. `tts=70,image=25,video=5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Weight of each kind, indexed like [`MediaKind::ALL`]; at least one is positive.
    weights: [u32; 4],
}

impl Mix {
    /// The weight of `kind` (0 when it is not in the mix).
    pub fn weight(&self, kind: MediaKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The kinds with a positive weight, in [`MediaKind::ALL`] order.
    pub fn kinds(&self) -> impl Iterator<Item = MediaKind> + '_ {
        MediaKind::ALL.into_iter().filter(|k| self.weight(*k) > 0)
    }
}

impl Default for Mix {
    /// `tts=70,image=25,video=5`.
    fn default() -> Self {
        Self {
            weights: [70, 25, 0, 5],
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .kinds()
            .map(|k| format!("{k}={}", self.weight(k)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Mix {
    type Err = BenchError;

    /// Parses `type=weight` pairs, comma separated. Weights are whole numbers, relative to their
    /// sum (they need not add up to 100); a type may appear once; the sum must be positive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| BenchError::flag("--mix", reason);
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(err(format!(
                    "`{s}` has an empty entry (expected e.g. tts=70,image=25,video=5)"
                )));
            }
            let Some((name, weight)) = part.split_once('=') else {
                return Err(err(format!(
                    "`{part}` is not type=weight (e.g. tts=70,image=25,video=5)"
                )));
            };
            let kind: MediaKind = name.parse()?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                err(format!(
                    "`{part}`: the weight must be a whole number from 0 to {}",
                    u32::MAX
                ))
            })?;
            if std::mem::replace(&mut seen[kind.index()], true) {
                return Err(err(format!("`{kind}` is given twice")));
            }
            weights[kind.index()] = weight;
        }
        if weights.iter().map(|w| u64::from(*w)).sum::<u64>() == 0 {
            return Err(err("the weights add up to 0".into()));
        }
        Ok(Self { weights })
    }
}

/// One distinct request: its type and its ready-made body.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Media type (which route it goes to).
    pub kind: MediaKind,
    /// The JSON body, built once and shared by every send.
    pub body: Bytes,
}

/// The distinct requests and the order in which they are sent.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The distinct requests; a kind's requests are contiguous, most popular first.
    pub requests: Vec<RequestSpec>,
    /// The request to send at each step: an index into `requests`.
    pub sequence: Vec<u32>,
}

impl Workload {
    /// `requests` sends over `distinct` distinct requests. Each send picks its media type by the
    /// mix's weights, then one of that type's distinct requests with Zipf(`s`) popularity (rank 1
    /// the most popular; `s = 0` is uniform). The distinct requests are split between the types
    /// in proportion to their weights (largest remainder, at least one each). The same
    /// arguments give the same workload (for a given build: the generator is rand's `StdRng`).
    pub fn zipf(
        requests: u64,
        distinct: u32,
        s: f64,
        mix: &Mix,
        seed: u64,
    ) -> Result<Self, BenchError> {
        if !s.is_finite() || s < 0.0 {
            return Err(BenchError::flag(
                "--zipf",
                format!("{s} is not a number of 0 or more"),
            ));
        }
        let kinds: Vec<MediaKind> = mix.kinds().collect();
        if (distinct as usize) < kinds.len() {
            return Err(BenchError::flag(
                "--distinct",
                format!(
                    "{distinct} is fewer than the {} media types of --mix {mix}",
                    kinds.len()
                ),
            ));
        }
        let shares = split(
            distinct,
            &kinds.iter().map(|k| mix.weight(*k)).collect::<Vec<_>>(),
        );
        let mut specs = Vec::with_capacity(distinct as usize);
        let mut offsets = Vec::with_capacity(kinds.len());
        let mut zipfs = Vec::with_capacity(kinds.len());
        for (kind, share) in kinds.iter().zip(&shares) {
            offsets.push(specs.len() as u32);
            specs.extend((0..*share).map(|i| RequestSpec {
                kind: *kind,
                body: kind.body(seed, i),
            }));
            let zipf = Zipf::new(f64::from(*share), s)
                .map_err(|e| BenchError::flag("--zipf", e.to_string()))?;
            zipfs.push((zipf, *share));
        }
        let pick_kind = WeightedIndex::new(kinds.iter().map(|k| mix.weight(*k)))
            .map_err(|e| BenchError::flag("--mix", e.to_string()))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let sequence = (0..requests)
            .map(|_| {
                let k = pick_kind.sample(&mut rng);
                let (zipf, share) = &zipfs[k];
                // Ranks are 1..=share; the float is clamped in case of rounding at the ends.
                let rank = (zipf.sample(&mut rng) as u32).clamp(1, *share);
                offsets[k] + rank - 1
            })
            .collect();
        Ok(Self {
            requests: specs,
            sequence,
        })
    }

    /// `requests` sends of one speech request: every answer after the first is a hit, as in a
    /// `wrk` run against one URL.
    pub fn hits_only(requests: u64, seed: u64) -> Self {
        let text = format!("mediactl bench {seed} hits-only");
        Self {
            requests: vec![RequestSpec {
                kind: MediaKind::Tts,
                body: Bytes::from(json!({"text": text}).to_string()),
            }],
            sequence: vec![0; requests as usize],
        }
    }
}

/// Splits `total` into parts proportional to `weights` (all positive) by largest remainder, each
/// part at least 1 (`total` is at least the number of weights).
fn split(total: u32, weights: &[u32]) -> Vec<u32> {
    let sum: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let exact: Vec<(u64, u64)> = weights
        .iter()
        .map(|w| {
            let scaled = u64::from(total) * u64::from(*w);
            (scaled / sum, scaled % sum)
        })
        .collect();
    let mut parts: Vec<u32> = exact.iter().map(|(q, _)| *q as u32).collect();
    let mut left = total - parts.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
    by_remainder.sort_by_key(|i| std::cmp::Reverse(exact[*i].1));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    // Every type in the mix gets at least one distinct request, taken from the largest part.
    while let Some(empty) = parts.iter().position(|p| *p == 0) {
        let largest = (0..parts.len()).max_by_key(|i| parts[*i]).unwrap_or(0);
        parts[largest] -= 1;
        parts[empty] += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_requests_are_split_in_proportion_with_at_least_one_each() {
        assert_eq!(split(50, &[70, 25, 5]), vec![35, 13, 2]);
        assert_eq!(split(3, &[98, 1, 1]), vec![1, 1, 1]);
        assert_eq!(split(10, &[1]), vec![10]);
        assert_eq!(split(7, &[1, 1]).iter().sum::<u32>(), 7);
    }

    #[test]
    fn every_distinct_body_is_different() {
        let w = Workload::zipf(10, 40, 1.0, &Mix::default(), 1).unwrap();
        let mut bodies: Vec<&Bytes> = w.requests.iter().map(|r| &r.body).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 40);
    }
}
