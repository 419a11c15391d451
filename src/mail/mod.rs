//! Outgoing mail and SMS: one-time codes and other account notices.
//!
//! [`Mailer`] is the small interface the senders implement: SMTP through
//! lettre ([`smtp::SmtpMailer`]), an HTTP webhook for SMS
//! ([`webhook::SmsWebhook`]) and the development mailbox
//! ([`mailbox::Mailbox`]) used when no SMTP server is configured.
//! [`Courier`] picks the sender for each recipient and delivers on a
//! background task with retries and backoff, so the request that caused a
//! message is answered before (and regardless of whether) it leaves.

pub mod mailbox;
pub mod smtp;
mod templates;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MailConfig};
use crate::metrics::{labels, names};
pub use templates::{code_message, email_change_message};

/// Messages waiting for delivery; beyond this new ones are dropped (and
/// counted as failed) rather than piling up in memory.
const QUEUE: usize = 4096;

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// An email address.
    Email(String),
    /// A phone number in international form (`+15551234567`).
    Phone(String),
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Email(a) | Self::Phone(a) => f.write_str(a),
        }
    }
}

/// One message: a subject, a plain-text body and an HTML body (SMS senders
/// use the text only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Recipient.
    pub to: Recipient,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message could not be built (bad address); retrying cannot help.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The server or network failed; worth retrying.
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// A way to deliver messages.
#[async_trait]
pub trait Mailer: Send + Sync {
    /// Short name for metrics and logs (`smtp`, `sms_webhook`, `mailbox`).
    fn channel(&self) -> &'static str;

    /// Delivers one message (one attempt).
    async fn send(&self, message: &Message) -> Result<(), MailError>;
}

/// Picks a [`Mailer`] per recipient and delivers in the background.
pub struct Courier {
    queue: mpsc::Sender<Message>,
}

/// The senders a [`Courier`] chooses from.
pub struct Senders {
    /// Email.
    pub email: Arc<dyn Mailer>,
    /// Phone numbers.
    pub phone: Arc<dyn Mailer>,
}

impl Senders {
    /// Builds the senders `config` describes: SMTP when `mail.smtp_url` is
    /// set, else the development mailbox; phones through the webhook, the
    /// email-to-SMS gateway (over the email sender), or the mailbox.
    ///
    /// # Errors
    ///
    /// When the SMTP URL or the webhook cannot be set up.
    pub fn from_config(config: &Config) -> Result<Senders, MailError> {
        let mail = &config.mail;
        let mailbox: Arc<dyn Mailer> = Arc::new(mailbox::Mailbox::new(config.mailbox_dir()));
        let email: Arc<dyn Mailer> = if mail.smtp_url.trim().is_empty() {
            mailbox.clone()
        } else {
            Arc::new(smtp::SmtpMailer::new(mail.smtp_url.trim(), &mail.from)?)
        };
        let phone: Arc<dyn Mailer> = if !mail.sms_webhook_url.trim().is_empty() {
            Arc::new(webhook::SmsWebhook::new(mail.sms_webhook_url.trim())?)
        } else if !mail.sms_gateway.trim().is_empty() {
            Arc::new(SmsGateway {
                template: mail.sms_gateway.trim().to_string(),
                email: email.clone(),
            })
        } else {
            mailbox
        };
        Ok(Senders { email, phone })
    }
}

/// Retry policy of a [`Courier`].
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per message (at least one).
    pub attempts: u32,
    /// Pause before the first retry; doubles per attempt.
    pub backoff: Duration,
}

impl Retry {
    /// The policy of `[mail]`.
    pub fn from_config(mail: &MailConfig) -> Retry {
        Retry {
            attempts: mail.retry_attempts.max(1),
            backoff: Duration::from_millis(mail.retry_backoff_ms),
        }
    }

    fn delay(&self, failed_attempts: u32) -> Duration {
        let factor = 1u32 << failed_attempts.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

impl Courier {
    /// Starts the delivery task; it stops when `shutdown` is cancelled
    /// (messages still waiting then are dropped with a log line).
    pub fn start(senders: Senders, retry: Retry, shutdown: CancellationToken) -> Arc<Courier> {
        let (queue, mut inbox) = mpsc::channel::<Message>(QUEUE);
        let senders = Arc::new(senders);
        tokio::spawn(async move {
            let deliveries = tokio_util::task::TaskTracker::new();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = inbox.recv() => match next {
                        Some(message) => {
                            let sender = match message.to {
                                Recipient::Email(_) => senders.email.clone(),
                                Recipient::Phone(_) => senders.phone.clone(),
                            };
                            let stop = shutdown.clone();
                            deliveries.spawn(deliver(sender, message, retry, stop));
                        }
                        None => break,
                    }
                }
            }
            deliveries.close();
            deliveries.wait().await;
        });
        Arc::new(Courier { queue })
    }

    /// Queues a message for delivery; never waits. A full queue drops the
    /// message (counted as failed).
    pub fn send(&self, message: Message) {
        if let Err(e) = self.queue.try_send(message) {
            let message = match e {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
            };
            metrics::counter!(names::MAIL_FAILED, labels::CHANNEL => "queue").increment(1);
            tracing::warn!(to = %message.to, "mail queue full or closed; message dropped");
        }
    }
}

/// Tries `message` up to `retry.attempts` times with growing pauses.
async fn deliver(
    sender: Arc<dyn Mailer>,
    message: Message,
    retry: Retry,
    shutdown: CancellationToken,
) {
    let channel = sender.channel();
    for attempt in 1..=retry.attempts {
        match sender.send(&message).await {
            Ok(()) => {
                metrics::counter!(names::MAIL_SENT, labels::CHANNEL => channel).increment(1);
                tracing::debug!(to = %message.to, channel, attempt, "message delivered");
                return;
            }
            Err(MailError::Invalid(reason)) => {
                tracing::warn!(to = %message.to, channel, %reason, "message refused; not retried");
                break;
            }
            Err(MailError::Failed(reason)) if attempt < retry.attempts => {
                metrics::counter!(names::MAIL_RETRIED, labels::CHANNEL => channel).increment(1);
                let pause = retry.delay(attempt);
                tracing::warn!(to = %message.to, channel, attempt, %reason, ?pause, "delivery failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(MailError::Failed(reason)) => {
                tracing::warn!(to = %message.to, channel, attempt, %reason, "delivery failed");
            }
        }
    }
    metrics::counter!(names::MAIL_FAILED, labels::CHANNEL => channel).increment(1);
    tracing::error!(to = %message.to, channel, "message not delivered; giving up");
}

/// Phone messages as email to an email-to-SMS gateway: `{phone}` in the
/// template becomes the number's digits.
struct SmsGateway {
    template: String,
    email: Arc<dyn Mailer>,
}

#[async_trait]
impl Mailer for SmsGateway {
    fn channel(&self) -> &'static str {
        "sms_gateway"
    }

    async fn send(&self, message: &Message) -> Result<(), MailError> {
        let Recipient::Phone(number) = &message.to else {
            return self.email.send(message).await;
        };
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        let mut as_email = message.clone();
        as_email.to = Recipient::Email(self.template.replace("{phone}", &digits));
        self.email.send(&as_email).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Flaky {
        calls: AtomicU32,
        fail_first: u32,
        done: tokio::sync::Notify,
    }

    #[async_trait]
    impl Mailer for Flaky {
        fn channel(&self) -> &'static str {
            "flaky"
        }
        async fn send(&self, _: &Message) -> Result<(), MailError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= self.fail_first {
                return Err(MailError::Failed(format!("attempt {n}")));
            }
            self.done.notify_one();
            Ok(())
        }
    }

    fn message() -> Message {
        Message {
            to: Recipient::Email("a@example.org".into()),
            subject: "s".into(),
            text: "t".into(),
            html: "h".into(),
        }
    }

    #[tokio::test]
    async fn failed_attempts_are_retried_until_one_succeeds() {
        let flaky = Arc::new(Flaky {
            calls: AtomicU32::new(0),
            fail_first: 2,
            done: tokio::sync::Notify::new(),
        });
        let courier = Courier::start(
            Senders {
                email: flaky.clone(),
                phone: flaky.clone(),
            },
            Retry {
                attempts: 5,
                backoff: Duration::from_millis(1),
            },
            CancellationToken::new(),
        );
        courier.send(message());
        tokio::time::timeout(Duration::from_secs(10), flaky.done.notified())
            .await
            .unwrap();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = Retry {
            attempts: 5,
            backoff: Duration::from_secs(1),
        };
        assert_eq!(r.delay(1), Duration::from_secs(1));
        assert_eq!(r.delay(2), Duration::from_secs(2));
        assert_eq!(r.delay(3), Duration::from_secs(4));
        assert_eq!(r.delay(40), MAX_BACKOFF);
    }
}
