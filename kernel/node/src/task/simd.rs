//! The running task's SIMD registers. The kernel touches SIMD registers only when it hashes
//! (creating objects), so they are saved only then, and restored before the task resumes.
//!
//! Where tasks get the fixed CPUID answer (CPUID faulting), that answer says there is no AVX,
//! so tasks also run with XCR0 limited to x87 and SSE: an AVX instruction then faults, as the
//! answer says it would. The kernel's own hashing gets the full XCR0 back (`arch::user`).

use alloc::boxed::Box;

use crate::arch::user::{self, INITIAL_SIMD, SimdState};

pub struct Simd {
    state: Box<SimdState>,
    saved: bool,
}

impl Simd {
    pub fn new() -> Simd {
        Simd { state: Box::new(SimdState::new()), saved: false }
    }

    /// A task starts: the one initial SIMD state every task gets.
    pub fn start(&mut self) {
        user::enter_task_xcr0();
        INITIAL_SIMD.restore();
        self.saved = false;
    }

    /// Before kernel code that may use SIMD registers.
    pub fn save(&mut self) {
        if !self.saved {
            self.state.save();
            user::enter_kernel_xcr0();
            self.saved = true;
        }
    }

    /// Before the task runs again.
    pub fn resume(&mut self) {
        if self.saved {
            user::enter_task_xcr0();
            self.state.restore();
            self.saved = false;
        }
    }

    /// The task is over: the kernel's XCR0 again.
    pub fn finish(&mut self) {
        user::enter_kernel_xcr0();
        self.saved = false;
    }
}
