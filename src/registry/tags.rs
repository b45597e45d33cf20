//! Tag listings: one page (`n`, `last`, `Link`), or every page streamed to a callback with
//! bounds on a page's size and the number of pages; what is not a tag is set aside.

use ureq::http::Method;

use super::client::Body;
use super::{Registry, Repository, header, parse_link_next, target, unexpected, url};
use crate::error::{Error, Result};

/// One page of a tag listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    /// The tags, in the registry's order.
    pub tags: Vec<String>,
    /// What the page listed that is not a tag by the distribution spec's grammar
    /// (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`): skipped, kept here to be reported.
    pub invalid: Vec<String>,
    /// The URL of the next page (from `Link`), when there is one.
    pub next: Option<String>,
}

/// The largest tag-list page read (its body), in bytes.
pub const MAX_TAG_PAGE: u64 = 8 << 20;
/// The most tag-list pages followed through `Link`.
pub const MAX_TAG_PAGES: usize = 100_000;

/// Whether `tag` matches the distribution spec's tag grammar.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl Registry {
    /// One page of the repository's tags (`limit` → `n`, `last` → `last`), with the next
    /// page's URL from `Link`. Pass a [`TagPage::next`] as `next_url` to follow it.
    pub fn tags_page(
        &self,
        repo: &Repository,
        limit: Option<usize>,
        last: Option<&str>,
        next_url: Option<&str>,
    ) -> Result<TagPage> {
        let t = target(repo, "pull", "tag list".into());
        let ep = self.server(repo)?;
        let list_url = match next_url {
            Some(u) => u.to_owned(),
            None => {
                let mut q = Vec::new();
                if let Some(n) = limit {
                    q.push(format!("n={n}"));
                }
                if let Some(l) = last {
                    q.push(format!("last={l}"));
                }
                let mut u = url(&ep, repo, "tags/list");
                if !q.is_empty() {
                    u.push('?');
                    u.push_str(&q.join("&"));
                }
                u
            }
        };
        let mut resp = self
            .client
            .send(&t, &ep, Method::GET, &list_url, &[], Body::None)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(Error::NotFound(format!("repository {repo}"))),
            _ => return Err(unexpected(&t, &mut resp)),
        }
        let next = header(&resp, "link").and_then(|l| parse_link_next(&l, &ep.origin));
        if header(&resp, "content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > MAX_TAG_PAGE)
        {
            return Err(Error::FailedPrecondition(format!(
                "{}: a tag list page over {MAX_TAG_PAGE} bytes",
                t.describe()
            )));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_TAG_PAGE)
            .read_to_string()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => Error::FailedPrecondition(format!(
                    "{}: a tag list page over {MAX_TAG_PAGE} bytes",
                    t.describe()
                )),
                e => super::client::network_error(&t, &e, 1),
            })?;
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<serde_json::Value>>,
        }
        let page: Page = serde_json::from_str(&text)
            .map_err(|e| Error::FailedPrecondition(format!("{}: not JSON: {e}", t.describe())))?;
        drop(text);
        let (mut tags, mut invalid) = (Vec::new(), Vec::new());
        for v in page.tags.unwrap_or_default() {
            match v {
                serde_json::Value::String(t) if is_valid_tag(&t) => tags.push(t),
                serde_json::Value::String(t) => invalid.push(t),
                other => invalid.push(other.to_string()),
            }
        }
        Ok(TagPage {
            tags,
            invalid,
            next,
        })
    }

    /// Calls `f` with each tag of the repository as its page arrives, in the registry's
    /// order (after `last`, at most `limit` when given), following `Link` up to
    /// [`MAX_TAG_PAGES`] pages of at most [`MAX_TAG_PAGE`] bytes each; past either cap the
    /// listing fails, naming it. Nothing but the current page is held. What is not a valid
    /// tag is handed to `skipped` instead.
    pub fn for_each_tag(
        &self,
        repo: &Repository,
        limit: Option<usize>,
        last: Option<&str>,
        f: &mut dyn FnMut(&str) -> Result<()>,
        skipped: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let mut left = limit.unwrap_or(usize::MAX);
        let mut next: Option<String> = None;
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                return Err(Error::FailedPrecondition(format!(
                    "{repo}: the tag list goes on past {MAX_TAG_PAGES} pages"
                )));
            }
            let page = match &next {
                None => self.tags_page(repo, limit, last, None)?,
                Some(url) => self.tags_page(repo, None, None, Some(url))?,
            };
            for bad in &page.invalid {
                skipped(bad);
            }
            for tag in &page.tags {
                // The spec's `last`: lexically after it (the registry's order is kept).
                if last.is_some_and(|l| tag.as_str() <= l) {
                    continue;
                }
                if left == 0 {
                    return Ok(());
                }
                left -= 1;
                f(tag)?;
            }
            match page.next {
                Some(url) if left > 0 => next = Some(url),
                _ => return Ok(()),
            }
        }
    }

    /// Tags of the repository, collected: [`Registry::for_each_tag`] into a list (invalid
    /// ones skipped with a warning logged).
    pub fn tags(
        &self,
        repo: &Repository,
        limit: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        self.for_each_tag(
            repo,
            limit,
            last,
            &mut |t| {
                tags.push(t.to_owned());
                Ok(())
            },
            &mut |bad| tracing::warn!(%repo, tag = %bad, "skipped: not a valid tag"),
        )?;
        Ok(tags)
    }
}
