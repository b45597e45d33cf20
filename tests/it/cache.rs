//! The read-through cache with another store as its source: the image source for one
//! platform ([`ReadThrough::image`]) and the read-through cases (hit, miss, early stop,
//! wrong bytes, concurrent readers, a source that dies mid-stream), with no tools.
//!
//! Store A holds the images; store B reads through to A. The source is A wrapped in
//! [`Counted`], a test double of [`Source`] that records every call and can flip a byte,
//! die after some bytes or go slowly.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oci_spec::image::{Descriptor, Platform};
use ocistore::cache::{ImageSource, ReadThrough, Source};
use ocistore::digest::Algorithm;
use ocistore::names::{descriptor, descriptor_digest, parse_platform};
use ocistore::registry::BlobStream;
use ocistore::{Digest, Error, ErrorKind, IngestManager, Labels, Manager, Result, Store, helpers};
use serde_json::json;

const MIB: usize = 1 << 20;

/// A fault the next blob fetch (one only) suffers.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The byte at this offset of the blob is flipped.
    Flip(u64),
    /// The stream fails once it reaches this offset.
    DieAfter(u64),
}

/// Store A as a source, counting calls: `fetch <digest> <offset>`, `size <digest>`,
/// `manifest <reference>`.
struct Counted {
    inner: Store,
    calls: Mutex<Vec<String>>,
    fault: Mutex<Option<Fault>>,
    slow: AtomicBool,
}

impl Counted {
    fn new(inner: Store) -> Counted {
        Counted {
            inner,
            calls: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
            slow: AtomicBool::new(false),
        }
    }

    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn arm(&self, fault: Fault) {
        *self.fault.lock().unwrap() = Some(fault);
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Source for Counted {
    fn fetch(&self, digest: &Digest, offset: u64, size: Option<u64>) -> Result<BlobStream> {
        self.log(format!("fetch {digest} {offset}"));
        let s = self.inner.fetch(digest, offset, size)?;
        Ok(BlobStream {
            start: s.start,
            reader: Box::new(Faulty {
                inner: s.reader,
                pos: s.start,
                fault: self.fault.lock().unwrap().take(),
                slow: self.slow.load(Ordering::SeqCst),
            }),
        })
    }

    fn size_of(&self, digest: &Digest) -> Result<u64> {
        self.log(format!("size {digest}"));
        self.inner.size_of(digest)
    }

    fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>)> {
        self.log(format!("manifest {reference}"));
        self.inner.manifest(reference)
    }

    fn labels(&self) -> Labels {
        Labels::from([("test.source".to_owned(), "a".to_owned())])
    }
}

/// A blob stream with a fault, or slowed to 64 KiB per read and a pause between reads.
struct Faulty {
    inner: Box<dyn Read + Send>,
    pos: u64,
    fault: Option<Fault>,
    slow: bool,
}

impl Read for Faulty {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut len = buf.len();
        if self.slow {
            std::thread::sleep(Duration::from_millis(5));
            len = len.min(64 << 10);
        }
        if let Some(Fault::DieAfter(at)) = self.fault {
            if self.pos >= at {
                return Err(io::Error::other("the source died"));
            }
            len = len.min((at - self.pos) as usize);
        }
        let n = self.inner.read(&mut buf[..len])?;
        if let Some(Fault::Flip(at)) = self.fault
            && (self.pos..self.pos + n as u64).contains(&at)
        {
            buf[(at - self.pos) as usize] ^= 0xff;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

struct Stores {
    _tmp: tempfile::TempDir,
    a: Store,
    b: Store,
    rt: ReadThrough<Counted>,
}

/// Store A with the sample image (`hello:1.0`, linux/amd64 and linux/arm64/v8) and the
/// single-platform sample (`hello:single`, linux/amd64); store B reading through to A.
fn stores() -> Stores {
    let tmp = tempfile::tempdir().unwrap();
    let a = Store::open(tmp.path().join("a")).unwrap();
    let b = Store::open(tmp.path().join("b")).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.oci.tar");
    let out = a.import_path(&sample, Default::default()).unwrap();
    assert_eq!(out.images[0].name, "docker.io/library/hello:1.0");
    let single = ocistore::oci::sample::sample_manifest(&a).unwrap();
    a.put_image("hello:single", single, None).unwrap();
    let rt = ReadThrough::new(b.clone(), Counted::new(a.clone()));
    Stores {
        _tmp: tmp,
        a,
        b,
        rt,
    }
}

fn platform(s: &str) -> Platform {
    parse_platform(s).unwrap()
}

fn digest_of(d: &Descriptor) -> Digest {
    descriptor_digest(d).unwrap()
}

fn read_all(r: Result<Box<dyn Read + Send + '_>>) -> Vec<u8> {
    let mut out = Vec::new();
    r.unwrap().read_to_end(&mut out).unwrap();
    out
}

/// A read that fails: the library error it carries.
fn read_err(r: Result<Box<dyn Read + Send + '_>>) -> Error {
    let mut out = Vec::new();
    let e = r.unwrap().read_to_end(&mut out).unwrap_err();
    Error::from_io(e, "read", "test")
}

fn has(store: &Store, d: &Digest) -> bool {
    match store.info(d) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("{e}"),
    }
}

fn write(store: &Store, bytes: &[u8]) -> (Digest, u64) {
    let d = Algorithm::Sha256.digest(bytes);
    helpers::write_blob(
        store,
        &format!("t-{d}"),
        &mut &bytes[..],
        None,
        Some(&d),
        Labels::new(),
    )
    .unwrap();
    (d, bytes.len() as u64)
}

/// `len` deterministic pseudo-random bytes (splitmix64 of `seed`).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `lab/big:1` in store A: an index over linux/amd64 and linux/arm64/v8, each manifest with
/// a small layer (shared) and a 3 MiB layer of its own. Returns the amd64 layers' digests.
fn big_image(a: &Store) -> Vec<Digest> {
    let shared = write(a, &noise(1, 4096));
    let mut entries = Vec::new();
    let mut amd64 = Vec::new();
    for (i, (arch, variant)) in [("amd64", None), ("arm64", Some("v8"))]
        .into_iter()
        .enumerate()
    {
        let own = write(a, &noise(10 + i as u64, 3 * MIB));
        let mut config = json!({"architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}});
        let mut p = json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            config["variant"] = json!(v);
            p["variant"] = json!(v);
        }
        let config = write(a, &serde_json::to_vec(&config).unwrap());
        let layer = |(d, n): (Digest, u64)| {
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(), "size": n})
        };
        let manifest = json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.0.to_string(), "size": config.1},
            "layers": [layer(shared), layer(own)]});
        let (md, mn) = write(a, &serde_json::to_vec(&manifest).unwrap());
        entries.push(
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(), "size": mn, "platform": p}),
        );
        if i == 0 {
            amd64 = vec![shared.0, own.0];
        }
    }
    let index = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let (d, n) = write(a, &serde_json::to_vec(&index).unwrap());
    let target = descriptor("application/vnd.oci.image.index.v1+json", &d, n).unwrap();
    a.put_image("lab/big:1", target, None).unwrap();
    amd64
}

/// The offsets the source was asked to fetch `d` from, in order.
fn fetches(calls: &[String], d: &Digest) -> Vec<u64> {
    let prefix = format!("fetch {d} ");
    calls
        .iter()
        .filter_map(|c| c.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

/// Reads layer 1 of `img` (the blob `d`) whole: the bytes are A's, the source was asked for
/// it once (and for nothing else), from `offset`, and B keeps it.
fn next_read_fetches_from(
    s: &Stores,
    img: &ImageSource<'_, Counted>,
    d: &Digest,
    offset: u64,
) -> Vec<u8> {
    s.rt.source().take_calls();
    let all = read_all(img.layer(1));
    assert!(all == helpers::read_blob(&s.a, d).unwrap(), "A's bytes");
    assert_eq!(s.rt.source().take_calls(), [format!("fetch {d} {offset}")]);
    assert!(has(&s.b, d), "kept");
    let err = s.b.status(&format!("pull-{d}")).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "the ingest went with the commit"
    );
    all
}

// ================================================================ the image source

#[test]
fn image_source_reads_one_platform_with_the_sources_bytes() {
    let s = stores();
    let arm = platform("linux/arm64/v8");
    let img = s.rt.image("hello:1.0", &arm).unwrap();
    let root = s.a.image("hello:1.0").unwrap().target;
    assert_eq!(img.root(), &root);
    let chosen = s.a.check_target(&root, &arm).unwrap().manifest.unwrap();
    let m = digest_of(img.descriptor());
    assert_eq!(m, chosen, "the arm64 manifest of the index");
    assert_eq!(
        img.descriptor()
            .platform()
            .as_ref()
            .map(ocistore::names::platform_string),
        Some("linux/arm64/v8".to_owned())
    );
    assert_eq!(
        read_all(img.open(&m)),
        helpers::read_blob(&s.a, &m).unwrap()
    );
    let config = digest_of(img.config_descriptor());
    assert_eq!(img.config(), helpers::read_blob(&s.a, &config).unwrap());
    assert_eq!(img.layers().len(), img.manifest().layers().len());
    assert!(!img.layers().is_empty());
    for (i, l) in img.layers().iter().enumerate() {
        let d = digest_of(l);
        let bytes = read_all(img.layer(i));
        assert_eq!(bytes, helpers::read_blob(&s.a, &d).unwrap(), "layer {i}");
        assert_eq!(read_all(img.open(&d)), bytes);
    }

    // B keeps the index, the manifest, the config and the layers, labelled with the
    // source's labels; not the other platform's; and no name.
    let calls = s.rt.source().take_calls();
    let mut wanted = vec![digest_of(&root), m, config];
    wanted.extend(img.layers().iter().map(digest_of));
    for d in &wanted {
        assert!(has(&s.b, d), "{d} kept in B");
        assert_eq!(s.b.info(d).unwrap().labels["test.source"], "a");
    }
    let amd =
        s.a.check_target(&root, &platform("linux/amd64"))
            .unwrap()
            .manifest
            .unwrap();
    assert!(
        !has(&s.b, &amd),
        "the other platform's manifest is not fetched"
    );
    assert!(
        s.b.images(&[]).unwrap().is_empty(),
        "the cache writes no name"
    );
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("manifest ")).count(),
        2,
        "the tag, then the platform's manifest by digest: {calls:?}"
    );
    assert_eq!(calls.len(), 2 + 1 + img.layers().len(), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("size ")), "{calls:?}");

    // Again by tag: the tag resolves at the source (B has no name for it), nothing else.
    let again = s.rt.image("hello:1.0", &arm).unwrap();
    assert_eq!(again.descriptor(), img.descriptor());
    assert_eq!(again.config(), img.config());
    for i in 0..again.layers().len() {
        read_all(again.layer(i));
    }
    assert_eq!(s.rt.source().take_calls(), ["manifest hello:1.0"]);
    // By digest, or from the root descriptor (linuxkit's NewSource): no source call at all.
    let by_digest = s.rt.image(root.digest().as_ref(), &arm).unwrap();
    assert_eq!(by_digest.descriptor(), img.descriptor());
    let at = s.rt.image_at(&root, &arm).unwrap();
    for i in 0..at.layers().len() {
        read_all(at.layer(i));
    }
    assert_eq!(s.rt.source().take_calls(), Vec::<String>::new());
}

#[test]
fn a_name_in_the_store_resolves_without_asking_the_source() {
    let s = stores();
    let root = s.a.image("hello:1.0").unwrap().target;
    s.b.put_image("local/hello:1", root.clone(), None).unwrap();
    let img =
        s.rt.image("local/hello:1", &platform("linux/amd64"))
            .unwrap();
    assert_eq!(img.root(), &root);
    let calls = s.rt.source().take_calls();
    assert!(
        !calls.iter().any(|c| c.contains("local/hello")),
        "the name resolved in B: {calls:?}"
    );
    assert_eq!(
        calls[0],
        format!("manifest {}", root.digest()),
        "only content is fetched: {calls:?}"
    );
}

/// `image(reference, platform)` fails `NotFound`, naming each of `parts`.
fn not_found(s: &Stores, reference: &str, platform_: &str, parts: &[&str]) {
    let err = s.rt.image(reference, &platform(platform_)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    for part in parts {
        assert!(err.to_string().contains(part), "{part} in {err}");
    }
}

#[test]
fn an_index_without_the_platform_fails_naming_it() {
    let s = stores();
    let all = ["linux/s390x", "linux/amd64", "linux/arm64/v8"];
    not_found(&s, "hello:1.0", "linux/s390x", &all);
    // A lone manifest whose config is of another platform.
    not_found(
        &s,
        "hello:single",
        "linux/arm64",
        &["linux/arm64", "linux/amd64"],
    );
    let single =
        s.rt.image("hello:single", &platform("linux/amd64"))
            .unwrap();
    assert_eq!(single.root(), single.descriptor());
    // A reference neither has.
    not_found(&s, "hello:none", "linux/amd64", &["hello"]);
}

#[test]
fn open_takes_only_the_images_own_blobs() {
    let s = stores();
    let img =
        s.rt.image("hello:1.0", &platform("linux/arm64/v8"))
            .unwrap();
    let root = s.a.image("hello:1.0").unwrap().target;
    let amd = s.rt.image_at(&root, &platform("linux/amd64")).unwrap();
    let own: Vec<Digest> = img.layers().iter().map(digest_of).collect();
    let foreign = amd
        .layers()
        .iter()
        .map(digest_of)
        .find(|d| !own.contains(d))
        .expect("the amd64 image has a layer of its own");
    s.rt.source().take_calls();
    let err = img.open(&foreign).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&foreign.to_string()), "{err}");
    let err = img.layer(img.layers().len()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(s.rt.source().take_calls(), Vec::<String>::new());
}

// ================================================================ read-through cases

#[test]
fn hit_makes_no_request_and_miss_fetches_once() {
    let s = stores();
    let layers = big_image(&s.a);
    // The shared layer is in B already (a hit); the 3 MiB one is not (a miss).
    let shared = helpers::read_blob(&s.a, &layers[0]).unwrap();
    write(&s.b, &shared);
    let img = s.rt.image("lab/big:1", &platform("linux/amd64")).unwrap();
    s.rt.source().take_calls();
    assert_eq!(read_all(img.layer(0)), shared);
    assert_eq!(s.rt.source().take_calls(), Vec::<String>::new(), "a hit");
    let big = next_read_fetches_from(&s, &img, &layers[1], 0);
    assert_eq!(read_all(img.layer(1)), big);
    assert_eq!(s.rt.source().take_calls(), Vec::<String>::new(), "kept");
}

#[test]
fn early_stop_keeps_resumable_bytes_and_the_next_read_resumes() {
    let s = stores();
    let layers = big_image(&s.a);
    let img = s.rt.image("lab/big:1", &platform("linux/amd64")).unwrap();
    let mut head = vec![0u8; MIB];
    let mut r = img.layer(1).unwrap();
    r.read_exact(&mut head).unwrap();
    drop(r);
    let d = layers[1];
    assert!(!has(&s.b, &d), "nothing committed by a stopped reader");
    let left = s.b.status(&format!("pull-{d}")).unwrap().offset;
    assert!(left >= MIB as u64, "its bytes stay: {left}");
    let all = next_read_fetches_from(&s, &img, &d, left);
    assert_eq!(&all[..MIB], &head[..]);
}

#[test]
fn wrong_bytes_are_refused_and_nothing_is_kept() {
    let s = stores();
    let layers = big_image(&s.a);
    let img = s.rt.image("lab/big:1", &platform("linux/amd64")).unwrap();
    let d = layers[1];
    s.rt.source().arm(Fault::Flip(2 * MIB as u64 + 3));
    let err = read_err(img.layer(1));
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    assert!(!has(&s.b, &d), "refused bytes are not committed");
    let err = s.b.status(&format!("pull-{d}")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "nor kept to resume from");
    // The source mends: the next read starts over and is right.
    next_read_fetches_from(&s, &img, &d, 0);
}

#[test]
fn a_source_dying_mid_stream_fails_the_read_and_the_next_resumes() {
    let s = stores();
    let layers = big_image(&s.a);
    let img = s.rt.image("lab/big:1", &platform("linux/amd64")).unwrap();
    let d = layers[1];
    let cut = MIB as u64 + 7;
    s.rt.source().arm(Fault::DieAfter(cut));
    let err = read_err(img.layer(1));
    assert!(err.to_string().contains("the source died"), "{err}");
    assert!(!has(&s.b, &d), "nothing committed");
    assert_eq!(s.b.status(&format!("pull-{d}")).unwrap().offset, cut);
    next_read_fetches_from(&s, &img, &d, cut);
}

#[test]
fn concurrent_readers_of_one_blob_fetch_it_once() {
    let s = stores();
    let layers = big_image(&s.a);
    let img = s.rt.image("lab/big:1", &platform("linux/amd64")).unwrap();
    let want = helpers::read_blob(&s.a, &layers[1]).unwrap();
    s.rt.source().take_calls();
    s.rt.source().slow.store(true, Ordering::SeqCst);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| read_all(img.layer(1))))
            .collect();
        for r in readers {
            assert!(r.join().unwrap() == want, "every reader gets the bytes");
        }
    });
    assert_eq!(fetches(&s.rt.source().take_calls(), &layers[1]), [0]);
    assert!(has(&s.b, &layers[1]));
}
