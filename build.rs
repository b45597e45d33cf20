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
    // Without source info: containerd's comments hold indented text that rustdoc would run
    // as doctests. The .proto in proto/ keeps them for readers.
    let files = protox::Compiler::new(["proto"])
        .expect("the proto directory")
        .include_source_info(false)
        .include_imports(true)
        .open_file(proto)
        .expect("compile containerd's content.proto")
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .bytes(".")
        .compile_fds(files)
        .expect("generate containerd's content service");
}
