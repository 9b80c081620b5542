//! The admin endpoint's view of retained messages: a page of them in topic
//! order (`GET /api/v1/retained`) and clearing one (`POST
//! /api/v1/retained/clear`). The ordered, resumable and bounded walk is
//! `RetainTree::page`; this file turns its entries into what the endpoint shows
//! and clears a topic the way an empty retained PUBLISH does (same code, same
//! store record). It does not parse HTTP (`crate::admin`).

use super::*;
use crate::retain::PageQuery;
use base64::Engine as _;
use serde::Serialize;

/// Entries one page returns at most, and by default.
pub const MAX_RETAINED_PAGE: usize = 1_000;
pub const DEFAULT_RETAINED_PAGE: usize = 100;
/// Payload bytes a preview shows: enough to recognise a message, and a page of
/// 1,000 stays far below a megabyte.
pub const PREVIEW_BYTES: usize = 64;
/// Nodes a page may look at past its cursor beyond a few per entry: a filter
/// that matches little in a large tree returns a short page (with a cursor)
/// instead of walking the whole tree in one router turn.
const PAGE_WORK: usize = 10_000;

/// What a listing asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedQuery {
    /// Start after this topic (the previous page's `next_after`).
    pub after: Option<String>,
    /// Only topics this filter matches (validated by the endpoint).
    pub filter: Option<String>,
    /// Include the `$SYS` tree (a filter starting with `$SYS` asks for it too).
    pub sys: bool,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetainedInfo {
    pub topic: String,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Seconds of Message Expiry Interval left; None: it does not expire.
    pub expires_in: Option<u32>,
    /// The first `PREVIEW_BYTES` of the payload, as `preview_encoding` says.
    pub preview: String,
    /// "utf8": the preview is those bytes as text (cut at a character
    /// boundary); "base64": they are not UTF-8, so standard base64 of them.
    pub preview_encoding: &'static str,
}

/// One page; `next_after` is None when the listing is complete. A page may
/// hold fewer than `limit` entries and still have a `next_after` (the walk's
/// work per request is bounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedPage {
    pub entries: Vec<RetainedInfo>,
    pub next_after: Option<String>,
}

impl Router {
    /// A page of live retained messages after `q.after`, in level order
    /// (`crate::retain::level_order`). Expired ones the sweep has not taken
    /// yet are left out, as a subscriber would not get them.
    pub(super) fn retained_page(&self, q: &RetainedQuery, now: Instant) -> RetainedPage {
        let limit = q.limit.clamp(1, MAX_RETAINED_PAGE);
        let page = self.retained.page(
            PageQuery {
                after: q.after.as_deref(),
                filter: q.filter.as_deref(),
                skip_sys: !q.sys,
                limit,
                budget: PAGE_WORK + 8 * limit,
            },
            |m| !m.is_expired(now),
        );
        RetainedPage {
            entries: page
                .entries
                .into_iter()
                .map(|(topic, m)| {
                    let (preview, preview_encoding) = preview(&m.payload);
                    RetainedInfo {
                        topic,
                        qos: m.qos.as_u8(),
                        payload_bytes: m.payload.len(),
                        expires_in: m.expiry_left(now),
                        preview,
                        preview_encoding,
                    }
                })
                .collect(),
            next_after: page.next_after,
        }
    }

    /// Clear the retained message of `topic` as an empty retained PUBLISH
    /// would [MQTT-3.3.1-6], its record included (it stays gone after a
    /// restart). False when there is none.
    pub(super) fn clear_retained(&mut self, topic: &str) -> bool {
        if !self.unset_retained(topic) {
            return false;
        }
        info!(topic, "retained message cleared by the admin endpoint");
        true
    }
}

/// The preview of a payload and how it is written.
fn preview(payload: &[u8]) -> (String, &'static str) {
    let head = payload.get(..PREVIEW_BYTES).unwrap_or(payload);
    match std::str::from_utf8(head) {
        Ok(s) => (s.to_string(), "utf8"),
        // Text whose 64th byte falls inside a character: the characters
        // before it. (An incomplete character at the payload's very end is
        // not text.)
        Err(e) if e.error_len().is_none() && head.len() < payload.len() => {
            let whole = head.get(..e.valid_up_to()).unwrap_or_default();
            (String::from_utf8_lossy(whole).into_owned(), "utf8")
        }
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(head),
            "base64",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_text_when_they_can_be_and_base64_otherwise() {
        assert_eq!(preview(b"21.5"), ("21.5".into(), "utf8"));
        let long = "x".repeat(100);
        assert_eq!(preview(long.as_bytes()), ("x".repeat(64), "utf8"));
        // 63 ASCII bytes then a 2-byte character across the 64-byte mark.
        let cut = format!("{}é and more", "y".repeat(63));
        assert_eq!(preview(cut.as_bytes()), ("y".repeat(63), "utf8"));
        assert_eq!(preview(&[0xff, 0x00, 0x10]), ("/wAQ".into(), "base64"));
        // A payload that ends inside a character is not text.
        assert_eq!(preview(&[b'a', 0xc3]), ("YcM=".into(), "base64"));
        let binary: Vec<u8> = (0..=255).rev().collect();
        let (p, enc) = preview(&binary);
        assert_eq!(enc, "base64");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(p).ok(),
            Some(binary[..64].to_vec())
        );
    }
}
