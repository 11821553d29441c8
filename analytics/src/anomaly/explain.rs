//! The human explanation of an alert: integers with thousands separators, ratios as percents.

/// `48200.4` → `48,200`.
pub(super) fn count(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `0.4213` → `42.1%`.
pub(super) fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::count(48_200.4), "48,200");
        assert_eq!(super::count(999.0), "999");
        assert_eq!(super::count(1_234_567.0), "1,234,567");
        assert_eq!(super::percent(0.4213), "42.1%");
    }
}
