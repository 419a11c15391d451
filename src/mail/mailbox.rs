//! The development mailbox: with no SMTP server configured, every message
//! is written to the log and to a file under `<data_dir>/mailbox/`, both
//! clearly marked as development delivery. Nothing leaves the machine.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{MailError, Mailer, Message};

/// Writes messages to files in a directory.
pub struct Mailbox {
    dir: PathBuf,
}

impl Mailbox {
    /// A mailbox in `dir` (created on first delivery).
    pub fn new(dir: PathBuf) -> Mailbox {
        Mailbox { dir }
    }
}

/// A file-name-safe form of `s`.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '+' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

#[async_trait]
impl Mailer for Mailbox {
    fn channel(&self) -> &'static str {
        "mailbox"
    }

    async fn send(&self, message: &Message) -> Result<(), MailError> {
        tracing::warn!(
            to = %message.to,
            subject = %message.subject,
            text = %message.text,
            "DEVELOPMENT DELIVERY (mail.smtp_url is not set): message not sent, written to the mailbox directory"
        );
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let path = self.dir.join(format!(
            "{stamp}-{}.txt",
            file_safe(&message.to.to_string())
        ));
        let body = format!(
            "X-Stompline-Delivery: development mailbox (not sent)\nTo: {}\nSubject: {}\n\n{}\n",
            message.to, message.subject, message.text
        );
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, body)
        })
        .await
        .map_err(|e| MailError::Failed(e.to_string()))?
        .map_err(|e| MailError::Failed(format!("writing to the mailbox: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::Recipient;

    #[tokio::test]
    async fn writes_one_marked_file_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::new(dir.path().join("mailbox"));
        let message = Message {
            to: Recipient::Phone("+15551234567".into()),
            subject: "Code".into(),
            text: "Your code is 123456".into(),
            html: String::new(),
        };
        mailbox.send(&message).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("mailbox"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 1);
        let path = files[0].as_ref().unwrap().path();
        assert!(path.to_string_lossy().ends_with("-+15551234567.txt"));
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("development mailbox"));
        assert!(text.contains("Your code is 123456"));
    }
}
