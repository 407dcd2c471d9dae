//! Building the MIME message of an outbox entry.

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart};

use crate::error::{Code, Error, Result};
use crate::store::outbox::OutboxRow;

/// The `Message-ID` of an outbox entry: `<ID@DOMAIN>`. Stable, so that a message sent
/// again after a crash carries the same id and a receiving side can drop the duplicate.
pub fn message_id(outbox_id: &str, domain: &str) -> String {
    format!("<{outbox_id}@{domain}>")
}

/// The MIME message of an outbox entry: `multipart/alternative` (text, then HTML), inside
/// `multipart/mixed` when it has attachments; `From` is `from`, `Date` is `now`, and the
/// `Message-ID` is derived from the outbox id. Marked `Auto-Submitted: auto-generated`
/// (RFC 3834), so that well-behaved auto-responders do not answer it.
pub fn build_message(
    row: &OutboxRow,
    from: &Mailbox,
    domain: &str,
    now: DateTime<Utc>,
) -> Result<Message> {
    // A bare address; the envelope is given, not read back from the headers (lettre's
    // header parser does not take quoted local parts, which are valid addresses).
    let to: lettre::Address = row.recipient.parse().map_err(|_| {
        Error::new(
            Code::Usage,
            format!("message {}: the recipient is not a valid address", row.id),
        )
    })?;
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), vec![to.clone()])
        .map_err(|e| Error::new(Code::Usage, format!("message {}: {e}", row.id)))?;
    let alternative =
        MultiPart::alternative_plain_html(row.body_text.clone(), row.body_html.clone());
    let attachments = row.attachment_list()?;
    let builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::from(to))
        .envelope(envelope)
        .subject(row.subject.clone())
        .date(now.into())
        .message_id(Some(message_id(&row.id, domain)))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ));
    let built = if attachments.is_empty() {
        builder.multipart(alternative)
    } else {
        let mut mixed = MultiPart::mixed().multipart(alternative);
        for a in attachments {
            let content_type = ContentType::parse(&a.content_type).map_err(|e| {
                Error::new(
                    Code::Usage,
                    format!(
                        "message {}: attachment {:?} has a bad content type: {e}",
                        row.id, a.filename
                    ),
                )
            })?;
            mixed = mixed.singlepart(Attachment::new(a.filename).body(a.content, content_type));
        }
        builder.multipart(mixed)
    };
    built.map_err(|e| Error::new(Code::Usage, format!("message {}: {e}", row.id)))
}
