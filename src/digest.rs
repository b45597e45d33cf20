//! Content digests: the registered algorithms, strict parsing of the OCI digest grammar, and
//! streaming hashing.
//!
//! The grammar (OCI image-spec, "Digests"):
//! `digest := algorithm ":" encoded`, `algorithm := component (separator component)*`,
//! `component := [a-z0-9]+`, `separator := [+._-]`, `encoded := [a-zA-Z0-9=_-]+`. Of the
//! grammatical algorithms only the registered ones are accepted, each with its own encoding:
//! `sha256` and `blake3` are 64 lowercase hex characters, `sha512` 128.

use std::fmt;
use std::io;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::{Error, Result};

/// A registered digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Algorithm {
    /// BLAKE3 with a 256-bit output.
    Blake3,
    /// SHA-256, the algorithm OCI uses by default.
    #[default]
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm, in name order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Blake3, Algorithm::Sha256, Algorithm::Sha512];

    /// The algorithm's name as it appears in a digest string.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Blake3 | Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// A new streaming hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }

    /// Hashes a whole byte slice.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(bytes);
        h.finalize()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Parses a registered algorithm name; anything else is `InvalidArgument`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            "blake3" => Ok(Algorithm::Blake3),
            other => Err(Error::InvalidArgument(format!(
                "unsupported digest algorithm {other:?} (supported: sha256, sha512, blake3)"
            ))),
        }
    }
}

/// Whether every byte is `0-9` or `a-f`. Branch-free over the whole slice (a table and an
/// AND, no early exit), so it vectorises: listings parse a million stored keys.
fn is_lower_hex(bytes: &[u8]) -> bool {
    const HEX: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = matches!(b as u8, b'0'..=b'9' | b'a'..=b'f');
            b += 1;
        }
        t
    };
    bytes.iter().fold(true, |ok, &b| ok & HEX[b as usize])
}

/// The longest digest string: `sha512:` and 128 hex characters.
const MAX_LEN: usize = 7 + 128;

/// A validated digest such as `sha256:e3b0…`. Ordering is the ordering of the digest string.
/// The whole string is held inline (no allocation), so digests are cheap to copy and
/// [`Digest::as_str`] — the key under which the store records a blob — costs nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    /// Algorithms are ordered as their names are, so the derived order is the string order.
    algorithm: Algorithm,
    /// `<algorithm>:<lowercase hex>`, zero-padded: ASCII only, built by `from_hex` alone.
    text: [u8; MAX_LEN],
}

impl Digest {
    /// Parses and validates a digest string (see the module docs for the grammar).
    ///
    /// Errors with `InvalidArgument` naming what is wrong: no `:`, an algorithm that is not
    /// grammatical or not registered, or an encoding of the wrong length or alphabet
    /// (uppercase hex is refused).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Err(Error::InvalidArgument(format!("digest {s:?}: {why}")));
        let Some((alg, hex)) = s.split_once(':') else {
            return bad("missing ':' between algorithm and encoded part");
        };
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "blake3" => Algorithm::Blake3,
            _ => {
                let grammatical_alg = !alg.is_empty()
                    && alg.split(['+', '.', '_', '-']).all(|c| {
                        !c.is_empty()
                            && c.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    });
                if !grammatical_alg {
                    return bad("malformed algorithm");
                }
                return bad("unsupported algorithm (supported: sha256, sha512, blake3)");
            }
        };
        if hex.len() != algorithm.hex_len() {
            return Err(Error::InvalidArgument(format!(
                "digest {s:?}: {algorithm} needs {} hex characters, found {}",
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !is_lower_hex(hex.as_bytes()) {
            return bad("encoded part must be lowercase hex");
        }
        Ok(Digest::from_hex(algorithm, hex.as_bytes()))
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding (without the algorithm).
    pub fn hex(&self) -> &str {
        &self.as_str()[self.algorithm.name().len() + 1..]
    }

    /// The digest string, `<algorithm>:<hex>`.
    pub fn as_str(&self) -> &str {
        let len = self.algorithm.name().len() + 1 + self.algorithm.hex_len();
        // SAFETY: `text` is written only by `from_hex`, from an algorithm name, ':' and hex
        // that `parse` or `to_hex` produced, all ASCII; `len` is exactly what it wrote.
        unsafe { std::str::from_utf8_unchecked(&self.text[..len]) }
    }

    /// A digest from validated lowercase hex of the algorithm's length.
    fn from_hex(algorithm: Algorithm, hex: &[u8]) -> Self {
        debug_assert!(hex.len() == algorithm.hex_len() && hex.is_ascii());
        let name = algorithm.name().as_bytes();
        let mut text = [0u8; MAX_LEN];
        text[..name.len()].copy_from_slice(name);
        text[name.len()] = b':';
        text[name.len() + 1..name.len() + 1 + hex.len()].copy_from_slice(hex);
        Digest { algorithm, text }
    }

    /// Builds a digest from raw hash output.
    fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Self {
        Digest::from_hex(algorithm, to_hex(bytes).as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// A streaming hasher for one [`Algorithm`]. Cloning it snapshots the running state, which is
/// how a writer reports the digest of what it has received so far.
#[derive(Clone)]
pub struct Hasher {
    state: State,
}

#[derive(Clone)]
enum State {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A hasher for `algorithm` with nothing hashed yet.
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
        };
        Hasher { state }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
            State::Blake3(_) => Algorithm::Blake3,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
            State::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest of everything fed so far; the hasher is consumed.
    pub fn finalize(self) -> Digest {
        match self.state {
            State::Sha256(h) => Digest::from_bytes(Algorithm::Sha256, &h.finalize()),
            State::Sha512(h) => Digest::from_bytes(Algorithm::Sha512, &h.finalize()),
            State::Blake3(h) => Digest::from_bytes(Algorithm::Blake3, h.finalize().as_bytes()),
        }
    }

    /// The digest of everything fed so far, leaving the hasher usable.
    pub fn current(&self) -> Digest {
        self.clone().finalize()
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes everything `reader` yields, returning the digest and the byte count. Reads in
/// 1 MiB chunks; the reader is read once.
pub fn hash_reader(algorithm: Algorithm, reader: &mut dyn io::Read) -> io::Result<(Digest, u64)> {
    let mut h = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((h.finalize(), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn known_vectors() {
        assert_eq!(Algorithm::Sha256.digest(b"").to_string(), EMPTY_SHA256);
        assert_eq!(
            Algorithm::Blake3.digest(b"").to_string(),
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let d = Algorithm::Sha512.digest(b"abc");
        assert!(d.hex().starts_with("ddaf35a193617aba"));
        assert_eq!(d.hex().len(), 128);
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for alg in Algorithm::ALL {
            let mut h = alg.hasher();
            for chunk in data.chunks(777) {
                h.update(chunk);
            }
            assert_eq!(h.current(), alg.digest(&data));
            let (d, n) = hash_reader(alg, &mut &data[..]).unwrap();
            assert_eq!((d, n), (alg.digest(&data), data.len() as u64));
        }
    }

    #[test]
    fn parse_round_trips() {
        for alg in Algorithm::ALL {
            let d = alg.digest(b"x");
            assert_eq!(d.as_str(), d.to_string());
            assert_eq!(d.hex().len(), alg.hex_len());
            assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        let upper = EMPTY_SHA256.to_uppercase().replace("SHA256", "sha256");
        let cases = [
            "",
            "sha256",
            ":abc",
            "sha256:",
            "sha256:abc",
            &upper,
            "sha256:../../x",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n",
            "sha+:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ];
        for c in cases {
            let err = Digest::parse(c).expect_err(c);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{c}");
        }
    }

    #[test]
    fn ordering_is_string_ordering() {
        let mut ds: Vec<Digest> = [b"a".as_slice(), b"b", b"c"]
            .iter()
            .flat_map(|b| Algorithm::ALL.map(|a| a.digest(b)))
            .collect();
        ds.sort();
        let strings: Vec<String> = ds.iter().map(ToString::to_string).collect();
        let mut sorted = strings.clone();
        sorted.sort();
        assert_eq!(strings, sorted);
    }
}
