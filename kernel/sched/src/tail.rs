//! A job's tail (docs/SCHEDULER.md, "The tail"): tasks are sent as soon as they are ready,
//! so near the end one node may still have tasks waiting in its driver's queue while another
//! has nothing left to do. The driver may take back a task it has not started and ask for it
//! to go to the idle node instead; the scheduler agrees only when the move costs no more input
//! bytes than placement would have accepted: with locality, a job's bytes moved grow by at
//! most the tie band (64 KiB) a move, and a task whose data is where it was sent stays.

use crate::NodeId;
use crate::place::{Placement, SMALL_INPUTS};
use crate::scheduler::{Scheduler, Status};

impl Scheduler {
    /// Whether `task`, sent to `from` and (as the driver knows) not started there, may go to
    /// `to` instead: `to` takes work and may run the task (not verification's other copy, not
    /// a node it failed on), and lacks no more of its input bytes than `from` does, give or
    /// take placement's tie band. The driver asks before it takes a task back.
    pub fn movable(&self, task: usize, from: NodeId, to: NodeId) -> bool {
        let nodes = self.alive.len();
        if task >= self.graph.tasks.len() || from >= nodes || to >= nodes || from == to {
            return false;
        }
        if !self.in_flight[from].contains(&task) || self.status[task] != Status::Running {
            return false;
        }
        if !self.takes_work(to)
            || self.first_result[task].is_some_and(|(n, _)| n == to)
            || self.avoided[task].contains(&to)
        {
            return false;
        }
        let inputs = self.inputs(task);
        let (at_from, at_to) =
            (self.holders.missing_bytes(&inputs, from), self.holders.missing_bytes(&inputs, to));
        match self.options.placement {
            Placement::Random => true,
            Placement::MinAbsent => at_to <= at_from,
            Placement::Locality => at_to <= at_from.saturating_add(SMALL_INPUTS),
        }
    }

    /// The driver took `task` back from `from`, where it had not started (see `Event::Moved`):
    /// it goes to `to` if it still may, else wherever placement says.
    pub(crate) fn moved(&mut self, from: NodeId, task: usize, to: NodeId) {
        let may = self.movable(task, from, to);
        if !self.answer_from(from, task) {
            return; // not working on it: a late or wrong report, ignored
        }
        if self.status[task] != Status::Running {
            return;
        }
        self.set_status(task, Status::Waiting);
        if may {
            let inputs = self.inputs(task);
            self.ship(task, to, &inputs);
        }
        // Otherwise it is ready again, and placed as any ready task is.
    }
}
