fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The descriptor set (imports included) is what `[[transcode]]` and the gRPC-Web clients load.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("echo_descriptor.pb"))
        .compile_protos(&["proto/echo.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
