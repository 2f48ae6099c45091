// Tasks are static (non-PIE) executables at the image base of the task ABI, so the kernel's
// loader maps segments where they were linked and applies no relocations.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=--image-base=0x400000");
        println!("cargo:rustc-link-arg-bins=-znoexecstack");
    }
}
