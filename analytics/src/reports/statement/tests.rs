use chrono_tz::Tz;

use super::*;
use crate::buckets::Totals as Sums;

fn d(s: &str) -> Decimal {
    s.parse().unwrap_or(Decimal::MAX)
}

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .unwrap_or(-1)
}

fn book() -> PriceBook {
    let v = |from: &str, i: &str, o: &str| PriceVersion {
        model: "m".into(),
        effective_from: ms(from),
        input_per_mtok: d(i),
        output_per_mtok: d(o),
        currency: "USD".into(),
    };
    PriceBook::new([
        v("2026-01-01T00:00:00Z", "2.5", "10"),
        v("2026-10-15T00:00:00Z", "0.15", "0.6"),
    ])
}

fn row(model: &str, bucket: &str, p: i64, c: i64) -> RollupRow {
    RollupRow {
        bucket: ms(bucket),
        value: model.into(),
        totals: Sums {
            requests: 1,
            prompt_tokens: p,
            completion_tokens: c,
            ..Sums::default()
        },
        written: 0,
    }
}

#[test]
fn amounts_round_half_to_even_at_six_places() {
    assert_eq!(round_amount(d("0.0000125")).to_string(), "0.000012");
    assert_eq!(round_amount(d("0.0000135")).to_string(), "0.000014");
    assert_eq!(round_amount(d("0.00000125001")).to_string(), "0.000001");
    assert_eq!(round_amount(d("1.5")).to_string(), "1.500000");
    assert_eq!(round_amount(d("-0.0000005")).to_string(), "0.000000");
    assert_eq!(unit(d("2.50")), "2.50");
    assert_eq!(unit(d("0.075")), "0.075");
    assert_eq!(unit(d("10")), "10.00");
}

#[test]
fn csv_fields_are_escaped_per_rfc_4180() {
    assert_eq!(csv_field("plain"), "plain");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    assert_eq!(csv_field(""), "");
}

#[test]
fn a_price_change_splits_a_model_into_two_lines() -> Result<(), crate::query::BadQuery> {
    let rows = [
        row("m", "2026-10-14T23:00:00Z", 1_000_000, 100_000),
        row("m", "2026-10-15T00:00:00Z", 2_000_000, 1),
        row("other", "2026-10-15T00:00:00Z", 5, 5),
    ];
    let usage = group(&book(), &rows);
    let period = crate::reports::period::Period::parse("2026-10", Tz::UTC)?;
    let s = build("org,1", &period, true, &book(), &usage, &[]);
    let amounts: Vec<(&str, &str, bool)> = s
        .lines
        .iter()
        .map(|l| (l.model.as_str(), l.amount.as_str(), l.unpriced))
        .collect();
    // 1M × 2.5 + 0.1M × 10 = 3.5; 2M × 0.15 + 1 × 0.6 / 1e6 = 0.3000006 → 0.300001
    assert_eq!(
        amounts,
        [
            ("m", "3.500000", false),
            ("m", "0.300001", false),
            ("other", "0.000000", true)
        ]
    );
    assert_eq!(s.totals.amount, "3.800001");
    assert_eq!(s.totals.prompt_tokens, 3_000_005);
    let csv = to_csv(&s);
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(lines[0], CSV_HEADER);
    assert_eq!(
        lines[1],
        "\"org,1\",2026-10,line,2026-10,m,2026-01-01T00:00:00Z,2.50,10.00,1,1000000,100000,3.500000,USD,"
    );
    assert!(lines[3].ends_with(",0.000000,USD,unpriced"), "{}", lines[3]);
    assert!(to_json(&s).starts_with("{\"org\":\"org,1\",\"period\":\"2026-10\",\"kind\":\"month\""));
    Ok(())
}

#[test]
fn adjustments_are_the_difference_from_the_frozen_lines() {
    let key = LineKey {
        model: "m".into(),
        price_from: Some(ms("2026-01-01T00:00:00Z")),
    };
    let t = |p, c| Tokens {
        requests: 1,
        prompt: p,
        completion: c,
    };
    let frozen: Usage = [(key.clone(), t(10, 1))].into();
    let mut current = frozen.clone();
    assert!(adjustments("2026-09", &current, &frozen).is_empty());
    merge(&mut current, [(key.clone(), t(5, 2))]);
    let adj = adjustments("2026-09", &current, &frozen);
    assert_eq!(
        adj,
        [Adjust {
            period: "2026-09".into(),
            key,
            delta: t(5, 2)
        }]
    );
}
