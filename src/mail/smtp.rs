//! Mail over SMTP with lettre: `smtp://host:port` (plain),
//! `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS),
//! credentials as `smtp://user:password@host`.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{MailError, Mailer, Message, Recipient};

/// How long one SMTP conversation may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Sends each message over a fresh SMTP connection.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    /// A sender for `url` with `from` as the sender address.
    ///
    /// # Errors
    ///
    /// When the URL or the address does not parse.
    pub fn new(url: &str, from: &str) -> Result<SmtpMailer, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailError::Invalid(format!("mail.smtp_url: {e}")))?
            .timeout(Some(TIMEOUT))
            .build();
        let from = from
            .trim()
            .parse()
            .map_err(|e| MailError::Invalid(format!("mail.from: {e}")))?;
        Ok(SmtpMailer { transport, from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    fn channel(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, message: &Message) -> Result<(), MailError> {
        let Recipient::Email(address) = &message.to else {
            return Err(MailError::Invalid(
                "SMTP delivers to email addresses only".into(),
            ));
        };
        let to: Mailbox = address
            .parse()
            .map_err(|e| MailError::Invalid(format!("recipient {address}: {e}")))?;
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&message.subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(message.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(message.html.clone()),
                    ),
            )
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_documented_form_build_a_sender() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://mail.example.org:587?tls=required",
            "smtp://mail.example.org?tls=opportunistic",
            "smtps://mail.example.org:465",
            "smtps://user:p%40ss@mail.example.org",
        ] {
            assert!(SmtpMailer::new(url, "codes@example.org").is_ok(), "{url}");
        }
        for (url, from) in [
            ("smtp://h?tls=sometimes", "codes@example.org"),
            ("ftp://mail.example.org", "codes@example.org"),
            ("smtp://127.0.0.1:2525", "not an address"),
        ] {
            assert!(
                matches!(SmtpMailer::new(url, from), Err(MailError::Invalid(_))),
                "{url} {from}"
            );
        }
    }
}
