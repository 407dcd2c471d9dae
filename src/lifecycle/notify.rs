//! Which messages a step of a request's life sends, to whom, with what. Messages carry
//! request ids, dates, categories, counts, rules and legal bases; never another person's
//! data, and of the subject's only the address they are sent to.

use std::path::PathBuf;

use super::Request;
use crate::error::Result;
use crate::mail::vars::{self, Message};
use crate::mail::{Concerns, compose};
use crate::policy::{IdentityKind, RequestKind};
use crate::store::outbox::{MailAttachment, NewMail};

/// What composing messages needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct MailSettings {
    pub templates_dir: Option<PathBuf>,
    /// The DPO's address (reminders, failure alerts).
    pub dpo: Option<String>,
    /// Where people reach quietus (links).
    pub public_url: String,
}

impl MailSettings {
    pub fn from_config(c: &crate::config::Config) -> MailSettings {
        MailSettings {
            templates_dir: c.mail.templates_dir.as_ref().map(|p| c.path(p)),
            dpo: c.mail.dpo.clone().filter(|d| !d.trim().is_empty()),
            public_url: c.server.public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// A message to the request's subject, when they gave an email address, in the words
    /// of the request's kind.
    pub fn to_subject(
        &self,
        req: &Request,
        message: Message,
        attachments: Vec<MailAttachment>,
    ) -> Result<Vec<NewMail>> {
        let about = Concerns::Request {
            id: &req.id,
            kind: req.kind,
        };
        self.to_identities(&req.subject, &req.locale, about, message, attachments)
    }

    /// A message to whoever these identities name, when one is an email address.
    pub fn to_identities(
        &self,
        subject: &crate::policy::Identities,
        locale: &str,
        about: Concerns<'_>,
        message: Message,
        attachments: Vec<MailAttachment>,
    ) -> Result<Vec<NewMail>> {
        let Some(to) = subject.get(&IdentityKind::Email) else {
            return Ok(Vec::new());
        };
        let m = compose(
            message.kind(),
            locale,
            to,
            about,
            &message.vars()?,
            attachments,
            self.templates_dir.as_deref(),
        )?;
        Ok(vec![m])
    }

    /// A message to the DPO, when an address is configured (in English).
    pub fn to_dpo<'a>(
        &self,
        about: impl Into<Concerns<'a>>,
        message: Message,
    ) -> Result<Vec<NewMail>> {
        let Some(to) = &self.dpo else {
            return Ok(Vec::new());
        };
        Ok(vec![compose(
            message.kind(),
            "en",
            to,
            about.into(),
            &message.vars()?,
            Vec::new(),
            self.templates_dir.as_deref(),
        )?])
    }

    /// A message to a system owner (manual tasks).
    pub fn to_owner(
        &self,
        owner: &str,
        about: Concerns<'_>,
        message: Message,
    ) -> Result<Vec<NewMail>> {
        Ok(vec![compose(
            message.kind(),
            "en",
            owner,
            about,
            &message.vars()?,
            Vec::new(),
            self.templates_dir.as_deref(),
        )?])
    }

    /// Acknowledgement on receipt; and the verification link when one is needed. Dates in
    /// `zone` (the policy's).
    pub fn received(
        &self,
        new: &crate::store::NewRequest,
        subject: &crate::policy::Identities,
        verify_token: Option<&str>,
        zone: crate::clock::Zone,
    ) -> Result<Vec<NewMail>> {
        let kind: RequestKind = new.kind;
        let about = Concerns::Request { id: &new.id, kind };
        let mut out = self.to_identities(
            subject,
            &new.locale,
            about,
            Message::Acknowledgement(vars::Acknowledgement {
                request_id: new.id.clone(),
                received: zone.day_of(new.received_at),
                deadline: new.due_date.map(|d| zone.day(d)),
                verify_needed: verify_token.is_some(),
            }),
            Vec::new(),
        )?;
        if let Some(t) = verify_token {
            out.extend(self.to_identities(
                subject,
                &new.locale,
                about,
                Message::Verification(vars::Verification {
                    request_id: new.id.clone(),
                    verify_url: format!("{}/verify?token={t}", self.public_url),
                }),
                Vec::new(),
            )?);
        }
        Ok(out)
    }
}
