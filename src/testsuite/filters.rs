//! The checks of the filter language over blobs and ingests.

use std::io::Write;

use super::Harness;
use super::checks::sample;
use crate::content::{ContentStore, Labels};
use crate::digest::{Algorithm, Digest};
use crate::error::ErrorKind;

fn walk(cs: &dyn ContentStore, filters: &[&str]) -> Vec<Digest> {
    let mut out = Vec::new();
    cs.walk(
        &mut |i| {
            out.push(i.digest);
            Ok(())
        },
        filters,
    )
    .unwrap_or_else(|e| panic!("walk {filters:?}: {e}"));
    out
}

fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
    v.sort();
    v
}

/// Every operator over blob fields, OR between filters, AND within one, quoting, numbers,
/// and index-backed label and digest lookups.
pub fn walk_filters(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let mk = |i: u64, size: usize, pairs: &[(&str, &str)]| -> Digest {
        let data = sample(size, 500 + i);
        let labels: Labels = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        crate::helpers::write_blob(cs, &format!("f{i}"), &mut &data[..], None, None, labels)
            .unwrap()
    };
    let a = mk(1, 10, &[("team", "build"), ("com.example/key", "x y")]);
    let b = mk(2, 20, &[("team", "test"), ("tier", "1")]);
    let c = mk(3, 4096, &[("team", "build-cache")]);
    let d = mk(4, 4096, &[]);
    let all = sorted(vec![a, b, c, d]);
    assert_eq!(walk(cs, &[]), all, "no filter: everything, in digest order");
    assert_eq!(walk(cs, &[""]), all, "an empty filter matches everything");
    assert_eq!(walk(cs, &["labels.team==build"]), vec![a]);
    assert_eq!(
        walk(cs, &["labels.team!=build"]),
        sorted(vec![b, c, d]),
        "as in containerd, != also matches blobs without the label"
    );
    assert_eq!(
        walk(cs, &["labels.team~=build"]),
        sorted(vec![a, c]),
        "unanchored"
    );
    assert_eq!(walk(cs, &["labels.team~=^build$"]), vec![a]);
    assert_eq!(walk(cs, &["labels.team~=/^te.t$/"]), vec![b]);
    assert_eq!(walk(cs, &["labels.team~=|cache|"]), vec![c]);
    assert_eq!(walk(cs, &["labels.tier"]), vec![b], "presence");
    assert_eq!(walk(cs, &[r#"labels."com.example/key"=="x y""#]), vec![a]);
    assert_eq!(walk(cs, &[r#"labels."com.example/key""#]), vec![a]);
    assert_eq!(
        walk(cs, &["labels.team==build", "labels.tier==1"]),
        sorted(vec![a, b]),
        "several filters are OR-ed"
    );
    assert_eq!(
        walk(cs, &["labels.team==test,labels.tier==1"]),
        vec![b],
        "AND"
    );
    assert_eq!(
        walk(cs, &["labels.team==test,labels.tier==2"]),
        Vec::<Digest>::new()
    );
    assert_eq!(
        walk(cs, &["size==4096"]),
        sorted(vec![c, d]),
        "size as a number"
    );
    assert_eq!(walk(cs, &["size==04096"]), sorted(vec![c, d]));
    assert_eq!(walk(cs, &["size!=4096"]), sorted(vec![a, b]));
    assert_eq!(walk(cs, &["size~=^[0-9]{2}$"]), sorted(vec![a, b]));
    assert_eq!(walk(cs, &[&format!("digest=={a}")]), vec![a]);
    assert_eq!(
        walk(cs, &[&format!("digest=={a}"), &format!("digest=={d}")]),
        sorted(vec![a, d])
    );
    assert_eq!(
        walk(
            cs,
            &[&format!("digest=={}", Algorithm::Sha256.digest(b"absent"))]
        ),
        Vec::<Digest>::new()
    );
    assert_eq!(walk(cs, &["digest~=^sha256:"]), all);
    assert_eq!(walk(cs, &["created_at~=^[0-9]{4}-"]), all);
    assert_eq!(walk(cs, &["updated_at"]), all);
    assert_eq!(
        walk(cs, &["labels.team==build,size==10"]),
        vec![a],
        "index plus a check"
    );
    assert_eq!(
        walk(cs, &["labels.team==build,size==11"]),
        Vec::<Digest>::new()
    );
    // A label update moves a blob in the index.
    let mut info = cs.info(&d).unwrap();
    info.labels.insert("team".into(), "build".into());
    cs.update(&info, &["labels.team"]).unwrap();
    assert_eq!(walk(cs, &["labels.team==build"]), sorted(vec![a, d]));
    // An error from the callback stops the walk.
    let mut n = 0;
    let err = cs
        .walk(
            &mut |_| {
                n += 1;
                Err(crate::error::Error::FailedPrecondition("stop".into()))
            },
            &[],
        )
        .unwrap_err();
    assert_eq!((err.kind(), n), (ErrorKind::FailedPrecondition, 1));
}

/// Filters over ingests: `ref`, `expected`, `offset`, `total`.
pub fn ingest_filters(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let d = Algorithm::Sha256.digest(b"expected");
    for (r, exp, len) in [
        ("build/layer-1", Some(&d), 3usize),
        ("build/layer-2", None, 5),
        ("other", None, 0),
    ] {
        let mut w = cs.writer(r, Some(8), exp).unwrap();
        w.write_all(&vec![1u8; len]).unwrap();
        w.close().unwrap();
    }
    let refs = |f: &[&str]| -> Vec<String> {
        cs.list_statuses(f)
            .unwrap()
            .into_iter()
            .map(|s| s.reference)
            .collect()
    };
    assert_eq!(refs(&[]), ["build/layer-1", "build/layer-2", "other"]);
    assert_eq!(refs(&["ref==other"]), ["other"]);
    assert_eq!(refs(&["ref~=^build/"]), ["build/layer-1", "build/layer-2"]);
    assert_eq!(refs(&["ref!=other"]), ["build/layer-1", "build/layer-2"]);
    assert_eq!(refs(&["expected"]), ["build/layer-1"]);
    assert_eq!(refs(&[&format!("expected=={d}")]), ["build/layer-1"]);
    assert_eq!(
        refs(&["offset==5", "ref==other"]),
        ["build/layer-2", "other"]
    );
    assert_eq!(refs(&["total==8,offset==0"]), ["other"]);
}

/// Filters that do not parse are InvalidArgument, for walks and ingest listings alike.
pub fn bad_filters(h: &dyn Harness) {
    let o = h.fresh();
    let cs = o.store();
    let mut w = cs.writer("x", None, None).unwrap();
    w.write_all(b"x").unwrap();
    w.commit(None, None, Labels::new()).unwrap();
    for bad in [
        "labels.a==",
        "==x",
        "labels.\"unterminated",
        "a=b",
        "a<b",
        "labels.a~=(",
        "a,,b",
        "a.",
        "labels.a==x,",
    ] {
        let err = cs.walk(&mut |_| Ok(()), &[bad]).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        let err = cs.list_statuses(&[bad]).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
    }
    // One bad filter among good ones still fails.
    assert_eq!(
        cs.walk(&mut |_| Ok(()), &["size==1", "a<b"])
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}
