//! The codec of every record stored in redb. All use of bincode stays in this file: an encoded
//! record starts with a format-version byte, so that the codec can be replaced (bincode is
//! unmaintained) by bumping that byte and decoding both here, without touching anything else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::content::Labels;
use crate::error::{Error, Result};

/// The first byte of every encoded record: bincode 2 standard configuration, serde.
const FORMAT_BINCODE2: u8 = 1;

/// Encodes a record as `[format byte] ++ bincode`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_BINCODE2];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("encoding plain records into a Vec cannot fail");
    out
}

/// Decodes a record written by [`encode`]; anything else is `Corrupted`, naming `what`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_BINCODE2, rest)) => {
            let (value, used) =
                bincode::serde::decode_from_slice(rest, bincode::config::standard())
                    .map_err(|e| Error::Corrupted(format!("record of {what}: {e}")))?;
            if used != rest.len() {
                return Err(Error::Corrupted(format!(
                    "record of {what}: {} trailing bytes",
                    rest.len() - used
                )));
            }
            Ok(value)
        }
        Some((other, _)) => Err(Error::Corrupted(format!(
            "record of {what}: unknown record format {other}"
        ))),
        None => Err(Error::Corrupted(format!("record of {what} is empty"))),
    }
}

/// A point in time as nanoseconds since the Unix epoch (records never hold a `SystemTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Nanos(pub u64);

impl Nanos {
    pub(crate) fn now() -> Self {
        Nanos::from(SystemTime::now())
    }
}

impl From<SystemTime> for Nanos {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for SystemTime {
    fn from(n: Nanos) -> Self {
        UNIX_EPOCH + Duration::from_nanos(n.0)
    }
}

/// `blobs` table value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobRecord {
    pub size: u64,
    pub created: Nanos,
    pub updated: Nanos,
    pub labels: Labels,
}

/// `ingests` table value. The offset is not stored: it is the data file's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IngestRecord {
    pub total: Option<u64>,
    /// The expected digest as a string (validated when it was stored).
    pub expected: Option<String>,
    pub started: Nanos,
    /// File id: the data is `ingest/<id>.data`.
    pub id: String,
}

/// `names` table value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NameRecord {
    /// The target descriptor as OCI JSON (the oci-spec type is not bincode-friendly).
    pub target: String,
    pub created: Nanos,
    pub updated: Nanos,
    pub labels: Labels,
}

/// `leases` table value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub created: Nanos,
    pub expires: Option<Nanos>,
    pub labels: Labels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_byte() {
        let mut labels = Labels::new();
        labels.insert("a".into(), "b".into());
        let r = BlobRecord {
            size: 42,
            created: Nanos(1),
            updated: Nanos(2),
            labels,
        };
        let bytes = encode(&r);
        assert_eq!(bytes[0], FORMAT_BINCODE2);
        assert_eq!(decode::<BlobRecord>(&bytes, "x").unwrap(), r);
    }

    #[test]
    fn garbage_is_corrupted_not_panic() {
        use crate::error::ErrorKind;
        for bad in [
            &[][..],
            &[9, 1, 2][..],
            &[1][..],
            &[1, 0xff, 0xff, 0xff][..],
        ] {
            let err = decode::<BlobRecord>(bad, "x").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted);
        }
        let mut ok = encode(&IngestRecord {
            total: None,
            expected: None,
            started: Nanos(0),
            id: "i".into(),
        });
        ok.push(0);
        assert!(decode::<IngestRecord>(&ok, "x").is_err());
    }
}
