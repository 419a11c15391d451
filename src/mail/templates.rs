//! The texts of outgoing messages: plain text and HTML for each.

use std::time::Duration;

use super::{Message, Recipient};

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn minutes(ttl: Duration) -> u64 {
    ttl.as_secs().div_ceil(60).max(1)
}

fn html_page(title: &str, lead: &str, code: &str, foot: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif\">\n<p>{lead}</p>\n\
         <p style=\"font-size: 28px; font-weight: bold; letter-spacing: 4px\">{code}</p>\n\
         <p>{foot}</p>\n</body></html>\n",
        title = escape(title),
        lead = escape(lead),
        code = escape(code),
        foot = escape(foot),
    )
}

/// The login code message.
pub fn code_message(to: Recipient, code: &str, ttl: Duration) -> Message {
    let subject = format!("Your stompline code: {code}");
    let foot = format!(
        "It expires in {} minutes. If you did not ask for it, ignore this message.",
        minutes(ttl)
    );
    let text = format!("Your stompline login code is {code}. {foot}");
    let html = html_page(&subject, "Your stompline login code is:", code, &foot);
    Message {
        to,
        subject,
        text,
        html,
    }
}

/// The message confirming a new email address.
pub fn email_change_message(address: &str, code: &str, ttl: Duration) -> Message {
    let subject = format!("Confirm your new stompline address: {code}");
    let foot = format!(
        "It expires in {} minutes. If you did not ask for this change, ignore this message.",
        minutes(ttl)
    );
    let text = format!("Your code to confirm this address for stompline is {code}. {foot}");
    let html = html_page(
        &subject,
        "Your code to confirm this address for stompline is:",
        code,
        &foot,
    );
    Message {
        to: Recipient::Email(address.to_string()),
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_appears_in_both_bodies_and_html_is_escaped() {
        let m = code_message(
            Recipient::Email("a@b.org".into()),
            "012345",
            Duration::from_secs(300),
        );
        assert!(m.text.contains("012345") && m.html.contains("012345"));
        assert!(m.text.contains("5 minutes"));
        assert_eq!(escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
