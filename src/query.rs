//! The fields that filters see: adaptors of [`Info`] and [`Status`] for the filter language.
//!
//! Blob fields: `digest`, `size` (a number), `labels.<key>`, `created_at`, `updated_at`
//! (RFC 3339 UTC, seconds). Ingest fields: `ref`, `expected`, `offset` and `total` (numbers).

use std::borrow::Cow;
use std::time::SystemTime;

use crate::content::{Info, Status};
use crate::filter::{Adaptor, Value};
use crate::names::Image;

/// RFC 3339 UTC with second precision, the form every time takes in output and filters.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Filter view of a blob's [`Info`].
pub struct InfoFields<'a>(pub &'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<Value<'_>> {
        let info = self.0;
        match path {
            [f] if f == "digest" => Some(Value::Str(Cow::Owned(info.digest.to_string()))),
            [f] if f == "size" => Some(Value::Num(info.size)),
            [f] if f == "created_at" => Some(Value::Str(Cow::Owned(rfc3339(info.created_at)))),
            [f] if f == "updated_at" => Some(Value::Str(Cow::Owned(rfc3339(info.updated_at)))),
            [f, key] if f == "labels" => info
                .labels
                .get(key.as_str())
                .map(|v| Value::Str(Cow::Borrowed(v.as_str()))),
            _ => None,
        }
    }
}

/// Filter view of an ingest's [`Status`].
pub struct StatusFields<'a>(pub &'a Status);

impl Adaptor for StatusFields<'_> {
    fn field(&self, path: &[String]) -> Option<Value<'_>> {
        let st = self.0;
        match path {
            [f] if f == "ref" => Some(Value::Str(Cow::Borrowed(st.reference.as_str()))),
            [f] if f == "expected" => st
                .expected
                .as_ref()
                .map(|d| Value::Str(Cow::Owned(d.to_string()))),
            [f] if f == "offset" => Some(Value::Num(st.offset)),
            [f] if f == "total" => st.total.map(Value::Num),
            _ => None,
        }
    }
}

/// Filter view of an [`Image`]: `name`, `target.digest`, `target.mediatype`, `labels.<key>`,
/// `created_at`, `updated_at`.
pub struct ImageFields<'a>(pub &'a Image);

impl Adaptor for ImageFields<'_> {
    fn field(&self, path: &[String]) -> Option<Value<'_>> {
        let img = self.0;
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        match p.as_slice() {
            ["name"] => Some(Value::Str(Cow::Borrowed(img.name.as_str()))),
            ["target", "digest"] => Some(Value::Str(Cow::Owned(img.target.digest().to_string()))),
            ["target", "mediatype"] => {
                Some(Value::Str(Cow::Owned(img.target.media_type().to_string())))
            }
            ["target", "size"] => Some(Value::Num(img.target.size())),
            ["created_at"] => Some(Value::Str(Cow::Owned(rfc3339(img.created_at)))),
            ["updated_at"] => Some(Value::Str(Cow::Owned(rfc3339(img.updated_at)))),
            ["labels", key] => img
                .labels
                .get(*key)
                .map(|v| Value::Str(Cow::Borrowed(v.as_str()))),
            _ => None,
        }
    }
}
