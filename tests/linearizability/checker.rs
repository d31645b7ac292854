//! A linearizability checker for histories of a small ordered map: the Wing & Gong search with
//! Lowe's memo of visited (linearized set, state) pairs, as Porcupine implements it.
//!
//! Why our own: stateright's `LinearizabilityTester` (cross-checked against this one in the tests
//! below) clones the remaining history at every step and keeps no memo, so a history that is not
//! linearizable costs it time exponential in its length and a recursion as deep as the history;
//! the histories here have thousands of operations. Porcupine itself is Go.
//!
//! The model: `keys` keys, each holding nothing or a value (values are unique per write, so a
//! read names the write it saw). An operation whose outcome is unknown (its process was killed,
//! or it returned an error) may take effect at any point after its call, or never.

use std::collections::HashSet;

/// A value written: unique in a history.
pub type Value = u64;

/// An operation on the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get(usize),
    Put(usize, Value),
    Delete(usize),
    /// Sets the key to `new` if it holds `expected`.
    Cas {
        key: usize,
        expected: Option<Value>,
        new: Option<Value>,
    },
    /// Several writes, atomically.
    Batch(Vec<(usize, Option<Value>)>),
    /// A transaction: reads `from`, then writes `value` to `to`; returns what it read.
    ReadWrite {
        from: usize,
        to: usize,
        value: Value,
    },
    /// Every key's value, at one point.
    Scan,
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    Done,
    Value(Option<Value>),
    /// A compare-and-swap: done, or refused with the key's current value.
    Cas(Result<(), Option<Value>>),
    Scan(Vec<Option<Value>>),
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Call {
    /// Which sequential process made it.
    pub process: usize,
    pub op: Op,
    /// When it was called, on a clock every process shares.
    pub called: u64,
    /// When it returned, and what; `None` if that is unknown.
    pub returned: Option<(u64, Out)>,
}

/// Why a history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    /// How many operations the longest order found could place.
    pub placed: usize,
    /// The operations, of which the ones completed by then could not all be placed.
    pub total: usize,
    /// An operation that had returned, but could not be placed before the one it blocked.
    pub stuck_at: Call,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no order explains the history: at most {} of its {} operations could be placed; \
             stuck at {:?}",
            self.placed, self.total, self.stuck_at
        )
    }
}

/// The share of completed operations whose interval overlaps one of another process.
pub fn overlapping(calls: &[Call]) -> f64 {
    let mut spans: Vec<(u64, u64, usize)> = calls
        .iter()
        .filter_map(|c| {
            c.returned
                .as_ref()
                .map(|(at, _)| (c.called, *at, c.process))
        })
        .collect();
    spans.sort_unstable();
    let overlaps = spans
        .iter()
        .enumerate()
        .filter(|&(i, &(start, end, process))| {
            spans[..i]
                .iter()
                .rev()
                .take(64)
                .chain(spans[i + 1..].iter().take_while(|s| s.0 <= end))
                .any(|s| s.2 != process && s.0 <= end && start <= s.1)
        })
        .count();
    overlaps as f64 / spans.len().max(1) as f64
}

type State = Vec<Option<Value>>;

/// Applies `op` to `state`; what it returns.
pub fn step(state: &mut State, op: &Op) -> Out {
    match op {
        Op::Get(key) => Out::Value(state[*key]),
        Op::Put(key, value) => {
            state[*key] = Some(*value);
            Out::Done
        }
        Op::Delete(key) => {
            state[*key] = None;
            Out::Done
        }
        Op::Cas { key, expected, new } => {
            if state[*key] == *expected {
                state[*key] = *new;
                Out::Cas(Ok(()))
            } else {
                Out::Cas(Err(state[*key]))
            }
        }
        Op::Batch(writes) => {
            for (key, value) in writes {
                state[*key] = *value;
            }
            Out::Done
        }
        Op::ReadWrite { from, to, value } => {
            let read = state[*from];
            state[*to] = Some(*value);
            Out::Value(read)
        }
        Op::Scan => Out::Scan(state.clone()),
    }
}

/// An entry of the event list: a call, or the return of the call `of`.
#[derive(Clone, Copy)]
struct Event {
    call: usize,
    is_return: bool,
    /// For a call: the index of its return event.
    partner: usize,
}

/// Checks that `calls` (on a map of `keys` keys, all empty at first) is linearizable.
pub fn check(keys: usize, calls: &[Call]) -> Result<(), Violation> {
    // Events in time order; at equal times calls come first (the operations overlap). Unknown
    // returns come last of all.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(calls.len() * 2);
    for (i, call) in calls.iter().enumerate() {
        order.push((call.called, false, i));
        let returned = call.returned.as_ref().map_or(u64::MAX, |(at, _)| *at);
        assert!(
            returned >= call.called,
            "call {i} returned before it was made"
        );
        order.push((returned, true, i));
    }
    order.sort_unstable();
    let mut events: Vec<Event> = order
        .iter()
        .map(|&(_, is_return, call)| Event {
            call,
            is_return,
            partner: usize::MAX,
        })
        .collect();
    let mut return_at = vec![0; calls.len()];
    for (at, event) in events.iter().enumerate() {
        if event.is_return {
            return_at[event.call] = at;
        }
    }
    for event in &mut events {
        if !event.is_return {
            event.partner = return_at[event.call];
        }
    }
    // A doubly linked list over the events, with a head sentinel at index n.
    let n = events.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { n } else { i - 1 }).collect();
    next.push(if n == 0 { usize::MAX } else { 0 }); // the head
    prev.push(usize::MAX);
    let end = n; // `next` of the last event is n, the head: a list that loops back means "end"
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = q;
        if q != end {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = at;
        if q != end {
            prev[q] = at;
        }
    };
    let mut pending_known = calls.iter().filter(|c| c.returned.is_some()).count();
    let mut state: State = vec![None; keys];
    let mut placed = vec![0u64; calls.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut best = (0, usize::MAX);
    let mut at = next[end];
    loop {
        if pending_known == 0 {
            return Ok(()); // what is left may take effect or not: either way it fits
        }
        if at == end {
            unreachable!("a known return is always in the list while pending_known > 0");
        }
        let event = events[at];
        if !event.is_return {
            let call = &calls[event.call];
            let mut after = state.clone();
            let out = step(&mut after, &call.op);
            let fits = call.returned.as_ref().is_none_or(|(_, seen)| *seen == out);
            if fits {
                placed[event.call / 64] |= 1 << (event.call % 64);
                if seen.insert((placed.clone(), after.clone())) {
                    stack.push((at, std::mem::replace(&mut state, after)));
                    unlink(&mut next, &mut prev, at);
                    unlink(&mut next, &mut prev, event.partner);
                    if call.returned.is_some() {
                        pending_known -= 1;
                    }
                    at = next[end];
                    continue;
                }
                placed[event.call / 64] &= !(1 << (event.call % 64));
            }
            at = next[at];
        } else {
            // A return whose call is not placed yet: undo the last placement.
            if stack.len() >= best.0 {
                best = (stack.len(), event.call);
            }
            let Some((call_at, before)) = stack.pop() else {
                return Err(Violation {
                    placed: best.0,
                    total: calls.len(),
                    stuck_at: calls[best.1].clone(),
                });
            };
            let call = events[call_at].call;
            state = before;
            placed[call / 64] &= !(1 << (call % 64));
            relink(&mut next, &mut prev, events[call_at].partner);
            relink(&mut next, &mut prev, call_at);
            if calls[call].returned.is_some() {
                pending_known += 1;
            }
            at = next[call_at];
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

    use super::*;

    fn call(process: usize, op: Op, called: u64, returned: Option<(u64, Out)>) -> Call {
        Call {
            process,
            op,
            called,
            returned,
        }
    }

    /// The witness an outside checker found (times in µs): process 0's compare-and-swap saw
    /// `c1-3` before process 2's later get returned the older `c3-2`.
    #[test]
    fn the_stale_read_of_the_witness_is_reported() {
        let (c3_2, c0_2, c1_3) = (32, 2, 13);
        let history = [
            call(
                3,
                Op::Cas {
                    key: 0,
                    expected: None,
                    new: Some(c3_2),
                },
                19,
                Some((2940, Out::Cas(Ok(())))),
            ),
            call(
                0,
                Op::Cas {
                    key: 0,
                    expected: Some(c3_2),
                    new: Some(c0_2),
                },
                7059,
                Some((9562, Out::Cas(Err(Some(c1_3))))),
            ),
            call(1, Op::Put(0, c1_3), 7733, Some((16350, Out::Done))),
            call(2, Op::Get(0), 10247, Some((10255, Out::Value(Some(c3_2))))),
        ];
        let violation = check(1, &history).expect_err("not linearizable");
        assert!(violation.placed < history.len());
        // Process 2 reading the new value is fine.
        let mut fixed = history.clone();
        fixed[3].returned = Some((10255, Out::Value(Some(c1_3))));
        check(1, &fixed).expect("linearizable");
        // So is the stale read if process 1's put might not have happened by then (killed):
        // process 0 could not have seen it.
        let mut unknown = history.clone();
        unknown[1].returned = None;
        unknown[2].returned = None;
        check(1, &unknown).expect("linearizable");
    }

    #[test]
    fn unknown_outcomes_may_take_effect_late_or_never() {
        let history = [
            call(0, Op::Put(0, 1), 0, None),
            call(1, Op::Get(0), 10, Some((11, Out::Value(None)))),
            call(1, Op::Get(0), 20, Some((21, Out::Value(Some(1))))),
        ];
        check(2, &history).expect("the put took effect between the gets");
        let history = [
            call(0, Op::Put(0, 1), 0, Some((1, Out::Done))),
            call(1, Op::Get(0), 10, Some((11, Out::Value(Some(1))))),
            call(1, Op::Get(0), 20, Some((21, Out::Value(None)))),
        ];
        check(2, &history).expect_err("a value went away with nothing deleting it");
    }

    #[test]
    fn multi_key_operations_are_atomic() {
        let torn = [
            call(
                0,
                Op::Batch(vec![(0, Some(1)), (1, Some(2))]),
                0,
                Some((10, Out::Done)),
            ),
            call(1, Op::Scan, 2, Some((3, Out::Scan(vec![Some(1), None])))),
        ];
        check(2, &torn).expect_err("half a batch seen");
        let whole = [
            torn[0].clone(),
            call(1, Op::Scan, 2, Some((3, Out::Scan(vec![Some(1), Some(2)])))),
        ];
        check(2, &whole).expect("the whole batch seen");
    }

    /// stateright's tester as the reference: the same verdict on small random histories.
    #[derive(Clone, Debug, Hash, PartialEq, Eq)]
    struct Reference(Vec<Option<Value>>);

    impl SequentialSpec for Reference {
        type Op = Op;
        type Ret = Out;
        fn invoke(&mut self, op: &Op) -> Out {
            step(&mut self.0, op)
        }
    }

    /// A random history of `processes` sequential processes on 2 keys: each operation either
    /// takes effect at a random instant inside its interval (so the history is linearizable), or
    /// has its result replaced by a random one (so it may not be).
    fn random_history(seed: u64, processes: usize, per_process: usize, tamper: bool) -> Vec<Call> {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // Intervals first, then effects applied in the order of their instants.
        let mut calls = Vec::new();
        let mut effects = Vec::new();
        let mut value = 0;
        for process in 0..processes {
            let mut t = next(5);
            for _ in 0..per_process {
                let called = t + 1 + next(3);
                let returned = called + 1 + next(6);
                let instant = called * 2 + 1 + next((returned - called) * 2 - 1);
                t = returned;
                value += 1;
                let key = next(2) as usize;
                let op = match next(6) {
                    0 | 1 => Op::Get(key),
                    2 => Op::Put(key, value),
                    3 => Op::Delete(key),
                    4 => Op::Cas {
                        key,
                        expected: if next(2) == 0 {
                            None
                        } else {
                            Some(next(value + 1))
                        },
                        new: Some(value),
                    },
                    _ => Op::Scan,
                };
                effects.push((instant, calls.len()));
                calls.push(call(process, op, called, None));
                calls.last_mut().expect("just pushed").returned = Some((returned, Out::Done));
            }
        }
        effects.sort_unstable();
        let mut state = vec![None; 2];
        for (_, i) in effects {
            let out = step(&mut state, &calls[i].op);
            let (at, _) = calls[i].returned.take().expect("set above");
            calls[i].returned = Some((at, out));
        }
        if tamper {
            let i = next(calls.len() as u64) as usize;
            let (at, _) = calls[i].returned.take().expect("set above");
            let out = match &calls[i].op {
                Op::Get(_) => Out::Value(Some(next(value + 1)).filter(|v| *v > 0)),
                Op::Cas { .. } => Out::Cas(Err(Some(next(value + 1)))),
                Op::Scan => Out::Scan(vec![Some(next(value + 1)), None]),
                _ => Out::Done,
            };
            calls[i].returned = Some((at, out));
        }
        calls
    }

    fn reference_verdict(calls: &[Call]) -> bool {
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            events.push((c.called, false, i));
            events.push((c.returned.as_ref().expect("known").0, true, i));
        }
        events.sort_unstable();
        let mut tester = LinearizabilityTester::new(Reference(vec![None; 2]));
        for (_, is_return, i) in events {
            let c = &calls[i];
            if is_return {
                let out = c.returned.as_ref().expect("known").1.clone();
                tester.on_return(c.process, out).expect("valid history");
            } else {
                tester
                    .on_invoke(c.process, c.op.clone())
                    .expect("valid history");
            }
        }
        tester.is_consistent()
    }

    /// The random histories are not all linearizable once tampered with: the agreement below
    /// is about both verdicts.
    #[test]
    fn tampered_histories_are_often_not_linearizable() {
        let mut refused = 0;
        for seed in 0..200 {
            let calls = random_history(seed, 3, 3, true);
            let ours = check(2, &calls).is_ok();
            assert_eq!(ours, reference_verdict(&calls), "seed {seed}: {calls:?}");
            refused += usize::from(!ours);
        }
        assert!(
            refused >= 20,
            "only {refused} of 200 tampered histories were refused"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn agrees_with_staterights_tester(seed in any::<u64>(), tamper in any::<bool>()) {
            let calls = random_history(seed, 3, 3, tamper);
            let ours = check(2, &calls).is_ok();
            prop_assert_eq!(ours, reference_verdict(&calls), "{:?}", calls);
            if !tamper {
                prop_assert!(ours, "an untampered history is linearizable");
            }
        }
    }
}
