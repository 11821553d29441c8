//! A statement's contents and its two renderings, pure and deterministic: the same usage, prices and
//! adjustments always give the same bytes (fixed field order, lines sorted by model then price
//! version, fixed decimal formatting, no generation timestamp).
//!
//! Rounding: amounts are kept exact until a line is rendered; each line's and each adjustment's
//! amount is rounded **half to even to 6 decimal places** (a millionth of the currency unit, below
//! any provider's smallest price step per token), and the total is the sum of the rounded lines and
//! adjustments, so the rendered figures add up.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::prices::{instant, PriceBook, PriceVersion};
use crate::query::render;
use crate::reports::period::Period;
use crate::store::RollupRow;

/// Decimal places of a rendered amount.
pub const AMOUNT_DP: u32 = 6;

/// A statement line's identity: the model and the price version (its `effective_from`; `None` when
/// the model had no price).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineKey {
    pub model: String,
    pub price_from: Option<i64>,
}

/// The billable counts of a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub requests: i64,
    pub prompt: i64,
    pub completion: i64,
}

impl Tokens {
    fn add(&mut self, o: &Tokens) {
        self.requests = self.requests.saturating_add(o.requests);
        self.prompt = self.prompt.saturating_add(o.prompt);
        self.completion = self.completion.saturating_add(o.completion);
    }

    fn minus(&self, o: &Tokens) -> Tokens {
        Tokens {
            requests: self.requests.saturating_sub(o.requests),
            prompt: self.prompt.saturating_sub(o.prompt),
            completion: self.completion.saturating_sub(o.completion),
        }
    }
}

/// A period's usage per line.
pub type Usage = BTreeMap<LineKey, Tokens>;

/// Groups per-model rollup rows (hour or minute buckets) into lines by the price version in effect
/// at each bucket's start. Versions start on whole hours, so no bucket straddles two.
pub fn group(book: &PriceBook, rows: &[RollupRow]) -> Usage {
    let mut out = Usage::new();
    for r in rows {
        let key = LineKey {
            model: r.value.clone(),
            price_from: book.at(&r.value, r.bucket).map(|v| v.effective_from),
        };
        out.entry(key).or_default().add(&Tokens {
            requests: r.totals.requests,
            prompt: r.totals.prompt_tokens,
            completion: r.totals.completion_tokens,
        });
    }
    out
}

/// Adds `more` into `usage`.
pub fn merge(usage: &mut Usage, more: impl IntoIterator<Item = (LineKey, Tokens)>) {
    for (k, t) in more {
        usage.entry(k).or_default().add(&t);
    }
}

/// One adjustment: what changed in a closed period's line since it was frozen (plus what earlier
/// statements already carried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjust {
    pub period: String,
    pub key: LineKey,
    pub delta: Tokens,
}

/// The adjustments of closed period `period`: every line whose current counts differ from `frozen`.
pub fn adjustments(period: &str, current: &Usage, frozen: &Usage) -> Vec<Adjust> {
    let keys: std::collections::BTreeSet<&LineKey> = current.keys().chain(frozen.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let now = current.get(k).copied().unwrap_or_default();
            let then = frozen.get(k).copied().unwrap_or_default();
            let delta = now.minus(&then);
            (delta.prompt != 0 || delta.completion != 0 || delta.requests != 0).then(|| Adjust {
                period: period.to_owned(),
                key: k.clone(),
                delta,
            })
        })
        .collect()
}

/// Rounds an exact amount for a statement (see the module docs) and fixes its scale, so `1.5`
/// renders `1.500000`.
pub fn round_amount(d: Decimal) -> Decimal {
    let mut r = d.round_dp_with_strategy(AMOUNT_DP, RoundingStrategy::MidpointNearestEven);
    r.rescale(AMOUNT_DP);
    r
}

/// A unit price as rendered: at least 2 decimals, no trailing zeros past them.
fn unit(d: Decimal) -> String {
    let mut n = d.normalize();
    if n.scale() < 2 {
        n.rescale(2);
    }
    n.to_string()
}

/// One line of a statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub model: String,
    pub price_from: Option<String>,
    pub input_per_mtok: Option<String>,
    pub output_per_mtok: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: String,
    pub unpriced: bool,
}

/// One adjustment line: a closed period's change, carried by this statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdjustmentLine {
    pub period: String,
    #[serde(flatten)]
    pub line: Line,
}

/// A statement's totals (lines plus adjustments).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: String,
}

/// A statement as rendered (field order is the JSON order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Statement {
    pub org: String,
    pub period: String,
    pub kind: &'static str,
    pub tz: String,
    pub from: String,
    pub to: String,
    pub status: &'static str,
    pub currency: String,
    pub lines: Vec<Line>,
    pub adjustments: Vec<AdjustmentLine>,
    pub totals: Totals,
}

/// A line and its exact-then-rounded amount.
fn line(book: &PriceBook, key: &LineKey, t: &Tokens) -> (Line, Decimal) {
    let version: Option<&PriceVersion> = key
        .price_from
        .and_then(|from| book.at(&key.model, from))
        .filter(|v| Some(v.effective_from) == key.price_from);
    let amount = round_amount(version.map_or(Decimal::ZERO, |v| v.cost(t.prompt, t.completion)));
    let l = Line {
        model: key.model.clone(),
        price_from: version.map(|v| instant(v.effective_from)),
        input_per_mtok: version.map(|v| unit(v.input_per_mtok)),
        output_per_mtok: version.map(|v| unit(v.output_per_mtok)),
        requests: t.requests,
        prompt_tokens: t.prompt,
        completion_tokens: t.completion,
        amount: amount.to_string(),
        unpriced: version.is_none(),
    };
    (l, amount)
}

/// Builds `org`'s statement for `period` from its usage and the adjustments it carries.
pub fn build(
    org: &str,
    period: &Period,
    closed: bool,
    book: &PriceBook,
    usage: &Usage,
    adjust: &[Adjust],
) -> Statement {
    let mut sum = Tokens::default();
    let mut amount = round_amount(Decimal::ZERO);
    let mut lines = Vec::with_capacity(usage.len());
    for (k, t) in usage {
        let (l, a) = line(book, k, t);
        sum.add(t);
        amount += a;
        lines.push(l);
    }
    let mut adjustments = Vec::with_capacity(adjust.len());
    for a in adjust {
        let (l, amt) = line(book, &a.key, &a.delta);
        sum.add(&a.delta);
        amount += amt;
        adjustments.push(AdjustmentLine {
            period: a.period.clone(),
            line: l,
        });
    }
    Statement {
        org: org.to_owned(),
        period: period.label.clone(),
        kind: period.kind.as_str(),
        tz: period.tz.name().to_owned(),
        from: render(&period.tz, period.start),
        to: render(&period.tz, period.end),
        status: if closed { "closed" } else { "open" },
        currency: book.currency().to_owned(),
        lines,
        adjustments,
        totals: Totals {
            requests: sum.requests,
            prompt_tokens: sum.prompt,
            completion_tokens: sum.completion,
            amount: round_amount(amount).to_string(),
        },
    }
}

/// The JSON rendering: compact, one trailing newline.
pub fn to_json(s: &Statement) -> String {
    let mut out = serde_json::to_string(s).unwrap_or_default();
    out.push('\n');
    out
}

/// The CSV header.
pub const CSV_HEADER: &str = "org,period,record,for_period,model,price_from,input_per_mtok,\
output_per_mtok,requests,prompt_tokens,completion_tokens,amount,currency,flag";

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break, quotes doubled.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_row(out: &mut String, fields: &[&str]) {
    let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&row.join(","));
    out.push_str("\r\n");
}

fn csv_line(out: &mut String, s: &Statement, record: &str, for_period: &str, l: &Line) {
    let (rq, p, c) = (
        l.requests.to_string(),
        l.prompt_tokens.to_string(),
        l.completion_tokens.to_string(),
    );
    let flag = if l.unpriced { "unpriced" } else { "" };
    csv_row(
        out,
        &[
            &s.org,
            &s.period,
            record,
            for_period,
            &l.model,
            l.price_from.as_deref().unwrap_or(""),
            l.input_per_mtok.as_deref().unwrap_or(""),
            l.output_per_mtok.as_deref().unwrap_or(""),
            &rq,
            &p,
            &c,
            &l.amount,
            &s.currency,
            flag,
        ],
    );
}

/// The CSV rendering (RFC 4180, CRLF line ends): a header, one `line` record per line, one
/// `adjustment` record per adjustment (its `for_period` the closed period), one `total` record.
pub fn to_csv(s: &Statement) -> String {
    let mut out = String::new();
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for l in &s.lines {
        csv_line(&mut out, s, "line", &s.period, l);
    }
    for a in &s.adjustments {
        csv_line(&mut out, s, "adjustment", &a.period, &a.line);
    }
    let t = &s.totals;
    let (rq, p, c) = (
        t.requests.to_string(),
        t.prompt_tokens.to_string(),
        t.completion_tokens.to_string(),
    );
    csv_row(
        &mut out,
        &[
            &s.org,
            &s.period,
            "total",
            &s.period,
            "",
            "",
            "",
            "",
            &rq,
            &p,
            &c,
            &t.amount,
            &s.currency,
            "",
        ],
    );
    out
}

#[cfg(test)]
mod tests;
