//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and generates
//! prost types plus their protobuf-JSON mapping (pbjson).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rtgate/v1/events.proto",
        "proto/rtgate/v1/frames.proto",
        "proto/rtgate/v1/api.proto",
        "proto/rtgate/v1/domain.proto",
        "proto/rtgate/v1/mirror.proto",
        "proto/rtgate/v1/delivery.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("rtgate_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;

    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;

    let descriptor_bytes = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".rtgate"])?;
    Ok(())
}
