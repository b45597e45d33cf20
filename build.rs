//! Generates the gRPC code of containerd's content service from `proto/` when the
//! `containerd` feature is on. protox compiles the .proto in Rust, so no `protoc` is needed.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "containerd")]
    containerd();
}

#[cfg(feature = "containerd")]
fn containerd() {
    let proto = "proto/containerd/services/content/v1/content.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], ["proto"]).expect("compile containerd's content.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .bytes(".")
        .compile_fds(files)
        .expect("generate containerd's content service");
}
