//! `mediactl stats`: what the cache saved, per media type, from the ledger of a data directory
//! or a deployed table (see `media_cache::domain::usage` for what each figure means).

use chrono::{DateTime, Utc};
use media_cache::domain::usage::{ReadCost, UsageReport};
use std::fmt::Write as _;

/// On-demand price of one million read request units (us-east-1, standard table class, as
/// published since November 2024). A scan's eventually consistent read of up to 8 KB is half a
/// unit.
pub const USD_PER_MILLION_READ_UNITS: f64 = 0.125;

/// Bytes one read unit covers in an eventually consistent scan.
const BYTES_PER_READ_UNIT: u64 = 8 * 1024;

/// Parses `--since`: an RFC 3339 time, or an age such as `90m`, `24h`, `7d`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| {
        format!("--since `{text}`: give a time (RFC 3339) or an age (90m, 24h, 7d)")
    })?;
    let age = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(|| format!("--since `{text}`: the unit is one of s, m, h, d"))?;
    Ok(now - age)
}

/// What a full scan of a table of `bytes` reads, in read units, and costs on demand.
pub fn scan_estimate(bytes: u64) -> (f64, f64) {
    let units = bytes.div_ceil(BYTES_PER_READ_UNIT) as f64;
    (units, cost_usd(units))
}

/// The on-demand price of `units` read units.
pub fn cost_usd(units: f64) -> f64 {
    units * USD_PER_MILLION_READ_UNITS / 1_000_000.0
}

/// The report as a table for a terminal.
pub fn render(report: &UsageReport) -> String {
    let mut out = String::new();
    let period = match report.since {
        Some(since) => format!("since {}", since.format("%Y-%m-%d %H:%M:%S UTC")),
        None => "all time".to_owned(),
    };
    let _ = writeln!(
        out,
        "usage of {}, {period} (at {})\n",
        report.source,
        report.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(
        out,
        "{:<7} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>14} {:>13}",
        "media",
        "requests",
        "hits",
        "misses",
        "hit rate",
        "charged",
        "saved",
        "saved %",
        "calls avoided",
        "entries live"
    );
    let rows = report
        .media_types
        .iter()
        .map(|m| (m.media_type.as_str(), &m.figures))
        .chain(std::iter::once(("total", &report.totals)));
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "{:<7} {:>9} {:>8} {:>8} {:>8.1}% {:>9} {:>9} {:>7.1}% {:>14} {:>13}",
            name,
            f.requests,
            f.hits,
            f.misses,
            f.hit_rate * 100.0,
            f.credits_charged,
            f.credits_saved,
            f.saved_percent,
            f.provider_calls_avoided,
            f.entries_live
        );
    }
    let _ = writeln!(
        out,
        "\ncredits refunded: {}; without the cache the same requests would have cost {}",
        report.totals.credits_refunded, report.totals.credits_without_cache
    );
    let _ = writeln!(
        out,
        "jobs: {} in flight, {} completed, {} failed",
        report.jobs.in_flight, report.jobs.completed, report.jobs.failed
    );
    if !report.top_keys.is_empty() {
        let _ = writeln!(out, "\ntop keys by hits:");
        for k in &report.top_keys {
            let _ = writeln!(
                out,
                "  {:<76} {:>7} hits {:>9} saved",
                k.cache_key, k.hits, k.credits_saved
            );
        }
    }
    if let Some(read) = &report.read {
        let _ = writeln!(out, "\n{}", describe_read(read));
    }
    out
}

/// What a scan read and cost.
pub fn describe_read(read: &ReadCost) -> String {
    format!(
        "read {} items in {} pages: {:.1} read units, about ${:.6} on demand",
        read.items,
        read.pages,
        read.capacity_units,
        cost_usd(read.capacity_units)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("2026-11-26T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-26T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            now - chrono::Duration::minutes(90)
        );
        assert_eq!(
            parse_since("7d", now).unwrap(),
            now - chrono::Duration::days(7)
        );
        assert!(parse_since("7w", now).unwrap_err().contains("unit"));
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn a_scan_estimate_counts_half_units_of_4_kb() {
        // 1 GiB read eventually consistent: 131,072 units, about 1.6 cents.
        let (units, usd) = scan_estimate(1 << 30);
        assert_eq!(units, 131_072.0);
        assert!((usd - 0.016384).abs() < 1e-9);
        assert_eq!(scan_estimate(1).0, 1.0);
    }
}
