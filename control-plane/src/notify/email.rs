//! Email over SMTP (lettre, tokio + rustls): a [`Mailer`] built from `LEAKY_SMTP_URL`
//! (`smtp://host:port` plain, `smtps://` TLS, `?tls=required` STARTTLS — lettre's URL format) and
//! the text each notification becomes.

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

/// Sends notification emails through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    /// A mailer for `url` sending as `from`.
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("smtp url `{url}`: {e}"))?
            .timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("from address `{from}`: {e}"))?;
        Ok(Mailer { transport, from })
    }

    /// Sends `body`'s notification to `to`.
    pub async fn send(&self, to: &str, body: &Value) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("recipient `{to}`: {e}"))?;
        let (subject, text) = render(body);
        let event_id = body["id"].as_str().unwrap_or_default();
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            // Same id as the webhook's `Leaky-Event-Id`: a mail client or test can dedupe on it.
            .message_id(Some(format!("<{event_id}@leaky-tokens.local>")))
            .body(text)
            .map_err(|e| e.to_string())?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The subject and plain text of a notification body `{id, type, time, org, data}`.
pub fn render(body: &Value) -> (String, String) {
    let kind = body["type"].as_str().unwrap_or("notification");
    let d = &body["data"];
    let v = |x: &Value| x.as_str().map_or_else(|| x.to_string(), str::to_owned);
    let subject = match kind {
        "purchase.completed" => format!("Purchase of {} tokens completed", v(&d["tokens"])),
        "purchase.compensated" => format!("Purchase of {} tokens failed", v(&d["tokens"])),
        "purchase.needs_attention" => "A purchase needs attention".to_owned(),
        "balance.threshold_crossed" => {
            format!("{}% of your prepaid tokens are used", v(&d["level"]))
        }
        "credits.expiring" => format!(
            "{} tokens expire on {}",
            v(&d["remaining"]),
            v(&d["expires_at"])
        ),
        "key.expiring" => format!(
            "API key {} expires on {}",
            v(&d["name"]),
            v(&d["expires_at"])
        ),
        "webhook.disabled" => format!("Webhook {} was disabled", v(&d["url"])),
        other => format!("Leaky Tokens: {other}"),
    };
    let pretty = serde_json::to_string_pretty(d).unwrap_or_default();
    let text = format!(
        "{subject}.\n\nOrg: {}\nEvent: {kind} ({})\nTime: {}\n\n{pretty}\n",
        body["org"].as_str().unwrap_or("-"),
        body["id"].as_str().unwrap_or("-"),
        body["time"].as_str().unwrap_or("-"),
    );
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_subject_per_kind() {
        let body = serde_json::json!({"id": "e1", "type": "balance.threshold_crossed", "org": "o",
            "time": "2026-01-01T00:00:00Z", "data": {"level": 80}});
        let (subject, text) = render(&body);
        assert_eq!(subject, "80% of your prepaid tokens are used");
        assert!(
            text.contains("Event: balance.threshold_crossed (e1)"),
            "{text}"
        );
        assert!(Mailer::new("smtp://127.0.0.1:2525", "a@example.com").is_ok());
        assert!(Mailer::new("smtp://127.0.0.1:2525", "not an address").is_err());
    }
}
