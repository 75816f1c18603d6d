//! Replaying recorded inputs into a state owner with the daemon's timing rules: inputs with
//! the same time are one batch (the daemon drains its queue before computing), and timers fire
//! at their deadlines in between. Used by the replay tests and the updater benchmark.
use crate::{
    fast_path::FastPath,
    input::{Now, TimedInput},
    state::AgentState,
};

/// Feeds `inputs` (sorted by time) into `state`, firing its timers on the way, then lets
/// the timers run until `until_ms` (and at least until no computation is pending). Returns
/// the errors the inputs produced, with their times.
pub fn replay<F: FastPath>(
    state: &mut AgentState<F>,
    inputs: &[TimedInput],
    until_ms: u64,
) -> Vec<(u64, String)> {
    let mut errors = Vec::new();
    let mut i = 0;
    while i < inputs.len() {
        let t = inputs[i].at_ms;
        // Timers due before the batch fire first; one due at the batch's own time fires after
        // it (the daemon handles what is queued before it looks at its timers).
        run_timers(state, t * 1_000_000);
        while i < inputs.len() && inputs[i].at_ms == t {
            if let Err(e) = state.handle(inputs[i].input.clone(), Now::at_ms(t)) {
                errors.push((t, e.to_string()));
            }
            i += 1;
        }
        state.on_timer(Now::at_ms(t));
    }
    let last = inputs.last().map(|i| i.at_ms).unwrap_or(0);
    run_timers(state, until_ms.max(last) * 1_000_000 + 1);
    while state.pending() {
        let Some(t) = state.next_deadline() else {
            break;
        };
        state.on_timer(Now {
            mono_ns: t,
            unix_ms: Now::at_ms(t / 1_000_000).unix_ms,
        });
    }
    errors
}

/// Fires every timer due before `end` (monotonic ns), in order.
fn run_timers<F: FastPath>(state: &mut AgentState<F>, end: u64) {
    while let Some(d) = state.next_deadline() {
        if d >= end {
            break;
        }
        state.on_timer(Now {
            mono_ns: d,
            unix_ms: Now::at_ms(d / 1_000_000).unix_ms,
        });
        // A deadline that did not move would loop forever; time only goes forward.
        if state.next_deadline() == Some(d) {
            break;
        }
    }
}
