//! `ocistore serve --containerd SOCKET`.

use std::path::PathBuf;

use clap::Args;

use crate::{Ctx, Failure};

/// Serve the store to containerd.
#[derive(Args)]
pub struct ServeArgs {
    /// Serve containerd's content API (containerd.services.content.v1.Content) on this unix
    /// socket, for a `[proxy_plugins]` entry of type "content" in containerd's config
    #[arg(long, value_name = "SOCKET")]
    containerd: PathBuf,
}

/// Runs the server until SIGTERM or SIGINT; with `--json`, prints one line when ready.
pub fn serve(ctx: &Ctx, args: ServeArgs) -> Result<(), Failure> {
    let store = ctx.open()?;
    let opts = ocistore::serve::Options {
        socket: args.containerd,
    };
    let root = ctx.root().to_path_buf();
    let json = ctx.json;
    ocistore::serve::run(store, &opts, |socket| {
        if json {
            let line = serde_json::json!({
                "socket": socket,
                "root": root,
                "pid": std::process::id(),
            });
            println!("{line}");
        } else {
            println!("serving {} on {}", root.display(), socket.display());
        }
        // Scripts wait for this line: it must not sit in a buffer.
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
