//! SMS through an HTTP webhook: `POST` JSON `{"to", "text"}`; any 2xx
//! answer is success.

use std::time::Duration;

use async_trait::async_trait;

use super::{MailError, Mailer, Message};

/// How long one webhook call may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Posts phone messages to a URL.
pub struct SmsWebhook {
    url: String,
    client: reqwest::Client,
}

impl SmsWebhook {
    /// A sender posting to `url`.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built.
    pub fn new(url: &str) -> Result<SmsWebhook, MailError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| MailError::Invalid(format!("mail.sms_webhook_url: {e}")))?;
        Ok(SmsWebhook {
            url: url.to_string(),
            client,
        })
    }
}

#[async_trait]
impl Mailer for SmsWebhook {
    fn channel(&self) -> &'static str {
        "sms_webhook"
    }

    async fn send(&self, message: &Message) -> Result<(), MailError> {
        let body = serde_json::json!({ "to": message.to.to_string(), "text": message.text });
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| MailError::Failed(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() && status.as_u16() != 429 {
            Err(MailError::Invalid(format!("webhook answered {status}")))
        } else {
            Err(MailError::Failed(format!("webhook answered {status}")))
        }
    }
}
