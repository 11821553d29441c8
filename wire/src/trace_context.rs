//! W3C Trace Context (`traceparent`, version 00), shared by the proxy's tracing and `leaky-telemetry`
//! (control plane, analytics, consumers): parsing what a caller or a Kafka header carries,
//! formatting what we send on, and new ids. The ids are the OTel ones, so the hex forms here are
//! what Jaeger shows and what the log lines carry (`trace_id`, `span_id`).

/// A span's identity as it crosses a process boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// The head-sampling decision (the `sampled` flag).
    pub sampled: bool,
}

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

impl SpanContext {
    /// `00-<trace>-<span>-<flags>`.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// [`Self::traceparent`] on the stack, written without `fmt` (a request's hot path sends one
    /// upstream and one with its usage event).
    pub fn traceparent_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut b = [b'-'; TRACEPARENT_LEN];
        b[..2].copy_from_slice(b"00");
        // Each slice is exactly twice its id's bytes, the one thing `encode_to_slice` checks.
        let _ = hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut b[3..35]);
        let _ = hex::encode_to_slice(self.span_id.to_be_bytes(), &mut b[36..52]);
        b[53..55].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        b
    }

    /// The trace id in lower-case hex (32 digits).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id.to_be_bytes())
    }

    /// The span id in lower-case hex (16 digits).
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id.to_be_bytes())
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids and version `ff` are invalid, and a later version may
/// append fields (W3C Trace Context §3.2).
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !hex(trace, 32) || !hex(span, 16) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// A random, non-zero trace id (uuid's fast v4 generator is already in the tree).
pub fn new_trace_id() -> u128 {
    uuid::Uuid::new_v4().as_u128().max(1)
}

/// A random, non-zero span id.
pub fn new_span_id() -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64).max(1)
}

/// `ratio` in [0, 1] as a threshold on the low 63 bits of a trace id (OTel's `TraceIdRatioBased`).
pub fn ratio_threshold(ratio: f64) -> u64 {
    let r = if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    // 2^63 as f64 is exact; the product fits u64 for r ≤ 1.
    (r * 9_223_372_036_854_775_808.0) as u64
}

/// The head decision for a new root trace: its id against the threshold.
pub fn sampled_by_ratio(trace_id: u128, threshold: u64) -> bool {
    (trace_id as u64 & (u64::MAX >> 1)) < threshold
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        assert_eq!(c.traceparent(), tp);
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id_hex(), "00f067aa0ba902b7");
        let off = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!off.unwrap().sampled);
    }

    #[test]
    fn hex_forms_match_formatting_them() {
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        let edges = [
            (1, 1),
            (u128::MAX, u64::MAX),
            (1 << 124, 1 << 60),
            (0xf, 0xf0),
        ];
        let walk = (0..2000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x, (x >> 3) as u64)
        });
        for (i, (trace_id, span_id)) in edges.into_iter().chain(walk).enumerate() {
            let c = SpanContext {
                trace_id,
                span_id,
                sampled: i % 2 == 0,
            };
            let expected = format!(
                "00-{trace_id:032x}-{span_id:016x}-{:02x}",
                u8::from(c.sampled)
            );
            assert_eq!(c.traceparent(), expected);
            assert_eq!(&c.traceparent_bytes()[..], expected.as_bytes());
            assert_eq!(c.trace_id_hex(), format!("{trace_id:032x}"));
            assert_eq!(c.span_id_hex(), format!("{span_id:016x}"));
            assert_eq!(parse_traceparent(expected.as_bytes()), Some(c));
        }
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn ratio_bounds_sample_none_or_all() {
        assert_eq!(ratio_threshold(0.0), 0);
        assert_eq!(ratio_threshold(f64::NAN), 0);
        assert_eq!(ratio_threshold(-1.0), 0);
        assert_eq!(ratio_threshold(1.0), 1u64 << 63);
        assert_eq!(ratio_threshold(0.5), 1u64 << 62);
        assert!(!sampled_by_ratio(u128::MAX, ratio_threshold(0.0)));
        assert!(sampled_by_ratio(u128::MAX, ratio_threshold(1.0)));
        assert!(sampled_by_ratio(1, ratio_threshold(0.5)));
    }
}
