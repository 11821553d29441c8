//! Instructions per streamed event spent by the usage meter (issue 19): an OpenAI stream of the
//! stubs' chunks fed event by event to a `UsageTracker`, as the proxy does. Run under callgrind:
//!
//!   cargo build --release -p leaky-usage --example chunk_cost
//!   valgrind --tool=callgrind target/release/examples/chunk_cost 20000
//!
//! and divide the total by the events (printed). The tracker's result is printed too, so a change
//! that alters what is counted shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use leaky_usage::{Surface, UsageTracker, Vendor};

const CHUNK: &str = r#"{"choices":[{"delta":{"content":" map"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796071824,"id":"chatcmpl-XLyvbuSzgqoECmFKA3OZG0FL4Scas","model":"gpt-4o-mini","object":"chat.completion.chunk","service_tier":"default","system_fingerprint":"fp_stub0001","usage":null}"#;

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let event = format!("data: {CHUNK}\n\n");
    let mut total = 0;
    for _ in 0..events / 40 {
        let mut t = UsageTracker::new(
            Surface::ChatCompletions(Vendor::OpenAi),
            "gpt-4o-mini",
            true,
            false,
        );
        for _ in 0..40 {
            t.on_chunk(std::hint::black_box(event.as_bytes()));
        }
        t.on_chunk(b"data: [DONE]\n\n");
        total += t.finish(10).completion_tokens;
    }
    println!("{events} events, {total} completion tokens counted");
}
