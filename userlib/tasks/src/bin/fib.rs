//! fib(n) as a dynamic graph: for n >= 2 it returns the thunk add(fib(n-1), fib(n-2)) instead of
//! computing anything. Arguments: n (u64 blob), this procedure, the `add` procedure.
#![no_std]
#![no_main]

use cairn_tasks::read_u64;
use cairn_userlib::{Handle, Limits, TaskResult, create_blob, create_thunk};

fn run(args: &[Handle]) -> TaskResult {
    let [n, fib, add] = args else { return Err("fib needs n, fib and add".into()) };
    let n = read_u64(n)?;
    if n < 2 {
        return Ok(create_blob(&n.to_le_bytes()));
    }
    let limits = Limits::new(1 << 20).map_err(cairn_userlib::TaskError::from)?;
    let left = create_thunk(limits, *fib, &[create_blob(&(n - 1).to_le_bytes()), *fib, *add]);
    let right = create_thunk(limits, *fib, &[create_blob(&(n - 2).to_le_bytes()), *fib, *add]);
    Ok(create_thunk(limits, *add, &[left, right]))
}

cairn_userlib::task!(run);
