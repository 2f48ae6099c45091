//! One node's tasks waiting in the host coordinator (`run.rs`): the node's thread takes them
//! one at a time, and the coordinator may take back one the thread has not started, for a node
//! with nothing to do (docs/SCHEDULER.md, "The tail").

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State<W> {
    waiting: VecDeque<W>,
    /// The thread is running one (taken and not yet answered).
    running: bool,
    /// The coordinator is done: the thread ends.
    closed: bool,
    /// The thread has ended (its node was lost): nothing pushed will run.
    gone: bool,
}

pub struct NodeQueue<W> {
    state: Mutex<State<W>>,
    changed: Condvar,
}

impl<W> Default for NodeQueue<W> {
    fn default() -> Self {
        NodeQueue {
            state: Mutex::new(State { waiting: VecDeque::new(), running: false, closed: false, gone: false }),
            changed: Condvar::new(),
        }
    }
}

impl<W> NodeQueue<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A thread that panicked holding the lock left the queue as it was: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a task at the back; false if the node's thread has ended.
    pub fn push(&self, work: W) -> bool {
        let mut state = self.lock();
        if state.gone {
            return false;
        }
        state.waiting.push_back(work);
        self.changed.notify_all();
        true
    }

    /// The next task, once there is one (the thread is then running it); None once closed.
    pub fn take(&self) -> Option<W> {
        let mut state = self.lock();
        loop {
            if state.closed || state.gone {
                return None;
            }
            if let Some(work) = state.waiting.pop_front() {
                state.running = true;
                return Some(work);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The thread has answered the task it took.
    pub fn finished(&self) {
        self.lock().running = false;
    }

    /// The node is lost (its thread ended, or the coordinator lost it): whatever waits is
    /// dropped (the scheduler places it again), and nothing more is taken.
    pub fn gone(&self) {
        let mut state = self.lock();
        state.gone = true;
        state.waiting.clear();
        self.changed.notify_all();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Nothing running and nothing waiting (and the thread still there).
    pub fn idle(&self) -> bool {
        let state = self.lock();
        !state.running && state.waiting.is_empty() && !state.gone && !state.closed
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Takes back the last of the `look` last waiting tasks that `may_move` allows, if any
    /// (not the whole queue: one whose tasks may not move would be scanned at every answer).
    pub fn take_back(&self, look: usize, may_move: impl Fn(&W) -> bool) -> Option<W> {
        let mut state = self.lock();
        let len = state.waiting.len();
        let at = (len.saturating_sub(look)..len).rev().find(|&i| may_move(&state.waiting[i]))?;
        state.waiting.remove(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_taken_back_is_never_run_and_one_running_is_never_taken_back() {
        let queue = NodeQueue::default();
        assert!(queue.push(1) && queue.push(2) && queue.push(3));
        assert_eq!(queue.take(), Some(1), "the front is the thread's");
        assert!(!queue.idle());
        assert_eq!(queue.take_back(8, |w| *w != 3), Some(2), "the last movable one");
        assert_eq!(queue.take_back(8, |w| *w == 1), None, "the running one is not waiting");
        assert_eq!(queue.waiting(), 1);
        queue.finished();
        assert_eq!(queue.take(), Some(3));
        queue.finished();
        assert!(queue.idle());
        queue.gone();
        assert!(!queue.push(4), "nobody would run it");
        assert!(!queue.idle(), "a thread that ended takes nothing");
    }

    #[test]
    fn a_lost_nodes_queue_holds_nothing_and_only_the_tail_is_looked_at() {
        let queue = NodeQueue::default();
        for w in 0..10 {
            queue.push(w);
        }
        assert_eq!(queue.take_back(3, |w| *w < 5), None, "only 7, 8 and 9 are looked at");
        assert_eq!(queue.take_back(3, |w| *w == 8), Some(8));
        queue.gone();
        assert_eq!(queue.waiting(), 0, "dropped: the scheduler places them again");
        assert_eq!(queue.take(), None, "its thread takes nothing more");
    }

    #[test]
    fn closing_wakes_a_waiting_thread() {
        let queue = std::sync::Arc::new(NodeQueue::<u32>::default());
        let waiter = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.take())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        queue.close();
        assert_eq!(waiter.join().unwrap(), None);
    }
}
