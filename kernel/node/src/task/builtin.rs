//! The example tasks built into the kernel image (see build.rs).

include!(concat!(env!("OUT_DIR"), "/builtin_tasks.rs"));
