//! The evaluator of docs/EVALUATION.md. It knows nothing of CPUs or address spaces: running a
//! procedure is the [`Executor`]'s job (ring-3 tasks in the kernel, a fake in tests), so every
//! rule here is tested on the host.

#![no_std]

extern crate alloc;

mod ahead;
mod charge;
mod error;
mod eval;
mod memo;
mod walk;

pub use ahead::LOOKAHEAD_DECODES;
pub use error::{EvalError, Failure, printable};
pub use eval::{Application, Ceilings, Evaluator, Executor, Io, NoIo, Replay, Stats};
pub use memo::Memo;
pub use walk::Walk;
