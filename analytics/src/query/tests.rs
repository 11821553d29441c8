use super::*;

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN)
}

fn params(from: &str, to: &str, g: Granularity) -> UsageParams {
    UsageParams {
        from: Some(from.into()),
        to: Some(to.into()),
        granularity: Some(g),
        ..UsageParams::default()
    }
}

fn row(bucket: &str, value: &str, tokens: i64) -> RollupRow {
    RollupRow {
        bucket: ms(bucket),
        value: value.into(),
        totals: Totals {
            requests: 1,
            total_tokens: tokens,
            ..Totals::default()
        },
        written: 0,
    }
}

#[test]
fn utc_days_read_day_rows_and_zones_read_hours_or_minutes() {
    let p = params("2026-03-01", "2026-03-31", Granularity::Day);
    let utc = plan(&p, 0).map(|p| p.level);
    assert_eq!(utc, Ok(Level::Day));
    let berlin = UsageParams {
        tz: Some("Europe/Berlin".into()),
        ..p.clone()
    };
    assert_eq!(plan(&berlin, 0).map(|p| p.level), Ok(Level::Hour));
    let kolkata = UsageParams {
        tz: Some("Asia/Kolkata".into()),
        ..p.clone()
    };
    assert_eq!(plan(&kolkata, 0).map(|p| p.level), Ok(Level::Minute));
    let month = params("2026-01-01", "2026-04-01", Granularity::Month);
    let plan = plan(&month, 0).ok();
    assert_eq!(plan.as_ref().map(|p| p.level), Some(Level::Day));
    assert_eq!(plan.map(|p| p.edges.len()), Some(4));
}

#[test]
fn bad_queries_are_refused_with_a_reason() {
    let p = params("2026-03-02", "2026-03-01", Granularity::Day);
    assert_eq!(plan(&p, 0), Err(BadQuery("from must be before to".into())));
    let tz = UsageParams {
        tz: Some("Mars/Olympus".into()),
        ..params("2026-03-01", "2026-03-02", Granularity::Hour)
    };
    assert!(plan(&tz, 0).is_err());
    let many = params("2020-01-01", "2026-01-01", Granularity::Minute);
    assert!(plan(&many, 0)
        .map_err(|e| e.0.contains("buckets"))
        .err()
        .unwrap_or(false));
    let long_minutes = UsageParams {
        tz: Some("Asia/Kolkata".into()),
        ..params("2026-01-01", "2026-03-01", Granularity::Day)
    };
    assert!(plan(&long_minutes, 0).is_err());
    let mixed = UsageParams {
        key: Some("k".into()),
        group_by: Some(Dim::Model),
        ..params("2026-03-01", "2026-03-02", Granularity::Hour)
    };
    assert!(plan(&mixed, 0).is_err());
    assert!(parse_instant("yesterday", &Tz::UTC).is_err());
}

#[test]
fn ungrouped_series_has_every_bucket_and_exact_totals() {
    let p = plan(
        &params(
            "2026-03-01T00:00:00Z",
            "2026-03-01T03:00:00Z",
            Granularity::Hour,
        ),
        0,
    );
    let p = p.unwrap_or_else(|e| unreachable!("{e}"));
    let rows = [
        row("2026-03-01T00:00:00Z", "", 10),
        row("2026-03-01T02:00:00Z", "", 5),
    ];
    let u = fold("acme", &p, &rows);
    let tokens: Vec<i64> = u.series.iter().map(|s| s.totals.total_tokens).collect();
    assert_eq!(tokens, vec![10, 0, 5]);
    assert_eq!((u.total.total_tokens, u.total.requests), (15, 2));
    assert_eq!(u.series[1].start, "2026-03-01T01:00:00Z");
    let json = serde_json::to_value(&u).unwrap_or_default();
    for field in [
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ] {
        assert!(json["total"].get(field).is_some(), "{field}");
        assert!(json["series"][0].get(field).is_some(), "{field}");
    }
    assert_eq!(json["series"][0]["start"], "2026-03-01T00:00:00Z");
}

#[test]
fn hours_fold_into_local_days_and_groups() {
    let p = UsageParams {
        tz: Some("America/New_York".into()),
        group_by: Some(Dim::Model),
        ..params("2026-07-14", "2026-07-16", Granularity::Day)
    };
    let p = plan(&p, 0).unwrap_or_else(|e| unreachable!("{e}"));
    // 03:00 UTC on the 15th is the evening of the 14th in New York.
    let rows = [
        row("2026-07-15T03:00:00Z", "gpt-4o", 7),
        row("2026-07-15T05:00:00Z", "gpt-4o", 1),
        row("2026-07-15T05:00:00Z", "qwen", 2),
    ];
    let u = fold("acme", &p, &rows);
    let got: Vec<(String, Option<String>, i64)> = u
        .series
        .iter()
        .map(|s| (s.start.clone(), s.group.clone(), s.totals.total_tokens))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-07-14T00:00:00-04:00".into(), Some("gpt-4o".into()), 7),
            ("2026-07-15T00:00:00-04:00".into(), Some("gpt-4o".into()), 1),
            ("2026-07-15T00:00:00-04:00".into(), Some("qwen".into()), 2),
        ]
    );
    assert_eq!(u.group_by, Some("model"));
}

#[test]
fn a_half_hour_zone_splits_days_at_local_midnight_from_minute_rows() {
    // Kolkata is UTC+05:30: local midnight of the 2nd is 18:30 UTC on the 1st.
    let p = UsageParams {
        tz: Some("Asia/Kolkata".into()),
        ..params("2026-03-01", "2026-03-03", Granularity::Day)
    };
    let p = plan(&p, 0).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(p.level, Level::Minute);
    let rows = [
        row("2026-03-01T18:29:00Z", "", 5),
        row("2026-03-01T18:30:00Z", "", 7),
        row("2026-03-02T18:29:00Z", "", 11),
    ];
    let u = fold("acme", &p, &rows);
    let got: Vec<(String, i64)> = u
        .series
        .iter()
        .map(|s| (s.start.clone(), s.totals.total_tokens))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-03-01T00:00:00+05:30".into(), 5),
            ("2026-03-02T00:00:00+05:30".into(), 18),
        ]
    );
    assert_eq!(u.total.total_tokens, 23);
}

#[test]
fn a_filter_keeps_one_value() {
    let p = UsageParams {
        key: Some("k2".into()),
        ..params("2026-03-01", "2026-03-02", Granularity::Day)
    };
    let p = plan(&p, 0).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!((p.dim, p.grouped), (Dim::Key, false));
    let rows = [
        row("2026-03-01T00:00:00Z", "k1", 3),
        row("2026-03-01T00:00:00Z", "k2", 4),
    ];
    assert_eq!(fold("acme", &p, &rows).total.total_tokens, 4);
}

#[test]
fn top_keys_rank_by_the_metric() {
    let rows = [
        row("2026-03-01T00:00:00Z", "a", 5),
        row("2026-03-02T00:00:00Z", "a", 5),
        row("2026-03-01T00:00:00Z", "b", 20),
        row("2026-03-01T00:00:00Z", "c", 1),
    ];
    let p = TopKeysParams {
        limit: Some(2),
        ..TopKeysParams::default()
    };
    let top = top_keys("acme", 0, DAY_MS, &p, &rows).unwrap_or_else(|e| unreachable!("{e}"));
    let ids: Vec<(&str, i64)> = top
        .keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.totals.total_tokens))
        .collect();
    assert_eq!(ids, vec![("b", 20), ("a", 10)]);
    let by_requests = TopKeysParams {
        by: Some("requests".into()),
        ..p
    };
    let top =
        top_keys("acme", 0, DAY_MS, &by_requests, &rows).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(top.keys[0].key_id, "a");
    let bad = TopKeysParams {
        by: Some("vibes".into()),
        ..TopKeysParams::default()
    };
    assert!(top_keys("acme", 0, DAY_MS, &bad, &rows).is_err());
}
