//! A guard between the decompressed stream and the tar parser. The `tar` crate reads GNU
//! long-name (`L`, `K`) and pax (`x`, `g`) extension entries whole into memory before it
//! yields the entry they describe, so a hostile archive could make it allocate gigabytes.
//! The guard follows the 512-byte block structure as the bytes pass and refuses an
//! extension entry larger than [`MAX_EXTENSION_SIZE`], and GNU sparse entries (whose extra
//! header blocks an image archive never needs). It reads sizes exactly as `tar` does: the
//! header's octal or base-256 field, overridden by a preceding pax `size` record.

use std::io::{self, Read};

use crate::error::{Error, Result};

/// Largest GNU long-name or pax extension entry accepted.
pub(super) const MAX_EXTENSION_SIZE: u64 = 1 << 20;

const BLOCK: usize = 512;

pub(super) struct TarGuard<R> {
    inner: R,
    /// The header block being assembled.
    header: Vec<u8>,
    /// Data and padding bytes of the current entry still to pass.
    skip: u64,
    /// The data of a pax `x` entry, collected to learn a `size` record.
    pax: Option<Vec<u8>>,
    /// Data bytes of the pax entry still to collect.
    pax_left: u64,
    /// A `size` from the last pax entry, for the next non-extension header.
    size_override: Option<u64>,
    /// The end-of-archive block has passed; the parser reads nothing after it.
    ended: bool,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            header: Vec::with_capacity(BLOCK),
            skip: 0,
            pax: None,
            pax_left: 0,
            size_override: None,
            ended: false,
        }
    }

    fn observe(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() && !self.ended {
            if self.skip > 0 {
                let k = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                if let Some(pax) = self.pax.as_mut() {
                    let take = usize::try_from(self.pax_left).unwrap_or(usize::MAX).min(k);
                    pax.extend_from_slice(&bytes[..take]);
                    self.pax_left -= take as u64;
                    if self.pax_left == 0 {
                        let records = self.pax.take().expect("checked above");
                        self.size_override = pax_size(&records);
                    }
                }
                self.skip -= k as u64;
                bytes = &bytes[k..];
                continue;
            }
            let k = (BLOCK - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..k]);
            bytes = &bytes[k..];
            if self.header.len() == BLOCK {
                self.on_header()?;
                self.header.clear();
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> Result<()> {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(());
        }
        let kind = h[156];
        let Some(mut size) = header_size(&h[124..136]) else {
            // The parser refuses this header itself; stop following the blocks.
            self.ended = true;
            return Ok(());
        };
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if !extension && let Some(s) = self.size_override.take() {
            size = s;
        }
        if kind == b'S' {
            return Err(Error::InvalidArgument(
                "the archive has a GNU sparse entry; image archives hold plain files".into(),
            ));
        }
        if extension && size > MAX_EXTENSION_SIZE {
            return Err(Error::InvalidArgument(format!(
                "the archive has a tar extension header (type {:?}) of {size} bytes, more than the {MAX_EXTENSION_SIZE} allowed",
                kind as char
            )));
        }
        if kind == b'x' && size > 0 {
            self.pax = Some(Vec::with_capacity(size as usize));
            self.pax_left = size;
        }
        self.skip = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n]).map_err(Error::into_io)?;
        Ok(n)
    }
}

/// A tar numeric field as the `tar` crate reads it: base-256 when the high bit is set,
/// else octal text (NUL-terminated, spaces trimmed).
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        return Some(
            field[4..]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        );
    }
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

/// The first `size` record of pax extension data (`"<len> <key>=<value>\n"` records).
fn pax_size(records: &[u8]) -> Option<u64> {
    let mut rest = records;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"size=") {
            return std::str::from_utf8(value).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn entries_through_guard(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut archive = tar::Archive::new(TarGuard::new(bytes));
        let mut out = Vec::new();
        let it = archive
            .entries()
            .map_err(|e| Error::from_io(e, "read", "t"))?;
        for e in it {
            let mut e = e.map_err(|e| Error::from_io(e, "read", "t"))?;
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|e| Error::from_io(e, "read", "t"))?;
            out.push((String::from_utf8_lossy(&e.path_bytes()).into_owned(), data));
        }
        Ok(out)
    }

    #[test]
    fn long_names_and_pax_sizes_stay_in_step() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("blobs/sha512/{}", "a".repeat(128));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        // A pax size record that overrides a zero size field, as tar does for huge files.
        b.append_pax_extensions([("size", &b"5"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("five").unwrap();
        h.set_size(0);
        h.set_cksum();
        let mut raw = b.into_inner().unwrap();
        raw.truncate(raw.len() - 1024);
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(b"12345");
        raw.resize(raw.len() + 507, 0);
        let mut h = tar::Header::new_gnu();
        h.set_path("last").unwrap();
        h.set_size(1);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(b"z");
        raw.resize(raw.len() + 511 + 1024, 0);
        let got = entries_through_guard(&raw).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [long.as_str(), "five", "last"]);
        assert_eq!(got[1].1, b"12345");
    }

    #[test]
    fn huge_extension_headers_are_refused() {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(MAX_EXTENSION_SIZE + 1);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.resize(raw.len() + (2 << 20), b'a');
        let err = entries_through_guard(&raw).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(header_size(b"00000000012\0"), Some(10));
        assert_eq!(header_size(b"      12    "), Some(10));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 7;
        assert_eq!(header_size(&big), Some(7));
        assert_eq!(pax_size(b"12 path=abc\n11 size=42\n"), Some(42));
        assert_eq!(pax_size(b"garbage"), None);
    }
}
