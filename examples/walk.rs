//! Walking the store with containerd's filters: every blob, blobs with a label, and the
//! images whose name matches, each answered from an index where one applies.
//!
//! ```sh
//! cargo run --example walk -- [STORE_DIR]
//! ```

use std::path::PathBuf;

use ocistore::{Manager, Store, helpers};

fn main() -> ocistore::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/example-walk"), PathBuf::from);
    let store = Store::open(&root)?;
    for (i, team) in ["build", "build", "release"].iter().enumerate() {
        let labels = [("example.com/team".to_owned(), (*team).to_owned())].into();
        let bytes = format!("artifact {i} of team {team}");
        helpers::write_blob(
            &store,
            &format!("walk-{i}"),
            &mut bytes.as_bytes(),
            None,
            None,
            labels,
        )?;
    }

    let mut all = 0;
    store.walk(
        &mut |_| {
            all += 1;
            Ok(())
        },
        &[],
    )?;
    println!("{all} blobs in the store");

    // `labels."K"==V` is answered from the label index: the cost is the matches, not the store.
    let filter = r#"labels."example.com/team"==build"#;
    store.walk(
        &mut |info| {
            println!("{filter}: {} ({} bytes)", info.digest, info.size);
            Ok(())
        },
        &[filter],
    )?;

    // Several filters are OR-ed; `,` within one is AND.
    let mut either = 0;
    store.walk(
        &mut |_| {
            either += 1;
            Ok(())
        },
        &[r#"labels."example.com/team"==release"#, "size==0"],
    )?;
    println!("release, or empty: {either}");

    for image in store.images(&["name~=^docker.io/library/"])? {
        println!("image {} -> {}", image.name, image.target.digest());
    }
    Ok(())
}
