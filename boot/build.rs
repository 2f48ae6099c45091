// Hands the path of the kernel ELF (built for x86_64-unknown-none as an artifact dependency) to
// the library, which writes it into disk images at run time.
fn main() {
    let kernel = std::env::var("CARGO_BIN_FILE_CAIRN_KERNEL_cairn-kernel")
        .expect("cargo sets CARGO_BIN_FILE_* for artifact dependencies (needs -Zbindeps)");
    println!("cargo:rustc-env=CAIRN_KERNEL_ELF={kernel}");
}
