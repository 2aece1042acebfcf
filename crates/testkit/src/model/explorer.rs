//! An explicit-state model checker: breadth-first search over every
//! interleaving of a [`Model`]'s actions, checking properties in every state.
//!
//! Visited states are remembered by a 64-bit fingerprint (as TLC does), with
//! the fingerprint of the parent and the index of the action that led there.
//! That is enough to rebuild a shortest path to any state by replaying actions
//! from the initial state, so counterexample traces cost no extra memory while
//! the search runs. A fingerprint collision could hide a state; at the sizes
//! explored here (millions of states) the odds are below one in a million.

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Debug};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use std::time::{Duration, Instant};

/// A system to explore: its initial states, the actions enabled in a state
/// and what each does, and the properties to check.
pub trait Model {
    type State: Clone + Hash + Debug;
    type Action: Clone + Debug;

    fn init_states(&self) -> Vec<Self::State>;

    /// Appends every action enabled in `state`, in a deterministic order.
    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>);

    /// The state after `action`, or `None` when the action changes nothing.
    fn next_state(&self, state: &Self::State, action: &Self::Action) -> Option<Self::State>;

    fn properties(&self) -> Vec<Property<Self>>;
}

/// Whether a property must hold in every reachable state or in at least one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expectation {
    /// A safety property: a reachable state where it fails is a counterexample.
    Always,
    /// A sanity property: some reachable state must satisfy it.
    Sometimes,
}

/// A named predicate over states.
pub struct Property<M: Model + ?Sized> {
    pub name: &'static str,
    pub expectation: Expectation,
    pub holds: fn(&M, &M::State) -> bool,
}

/// A path from an initial state: each step is an action and the state it led to.
pub struct Trace<M: Model> {
    pub init: M::State,
    pub steps: Vec<(M::Action, M::State)>,
}

impl<M: Model> Trace<M> {
    pub fn last_state(&self) -> &M::State {
        self.steps.last().map_or(&self.init, |(_, s)| s)
    }
}

impl<M: Model> Debug for Trace<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  init")?;
        for (i, (action, _)) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>3}. {action:?}", i + 1)?;
        }
        writeln!(f, "  final state: {:#?}", self.last_state())
    }
}

/// What one property turned out to be.
pub struct Finding<M: Model> {
    pub name: &'static str,
    pub expectation: Expectation,
    /// For `Always`: the shortest counterexample, if any.
    /// For `Sometimes`: the shortest witness, if any.
    pub trace: Option<Trace<M>>,
}

impl<M: Model> Finding<M> {
    /// Whether the property is satisfied (no counterexample / a witness found).
    pub fn ok(&self) -> bool {
        match self.expectation {
            Expectation::Always => self.trace.is_none(),
            Expectation::Sometimes => self.trace.is_some(),
        }
    }
}

/// The outcome of a search.
pub struct Report<M: Model> {
    /// Distinct states reached.
    pub states: usize,
    /// Actions taken, including those that led to known states.
    pub transitions: usize,
    /// Length of the longest shortest path to a state.
    pub max_depth: usize,
    pub elapsed: Duration,
    /// False when the search stopped early (state limit or first violation).
    pub complete: bool,
    pub findings: Vec<Finding<M>>,
}

impl<M: Model> Report<M> {
    /// True when every property is satisfied.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(Finding::ok)
    }

    /// The counterexample found for the property `name`, if any.
    pub fn counterexample(&self, name: &str) -> Option<&Trace<M>> {
        self.findings
            .iter()
            .find(|f| f.name == name && f.expectation == Expectation::Always)
            .and_then(|f| f.trace.as_ref())
    }
}

/// Limits of one search.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Stop once this many states are known (`usize::MAX`: no limit).
    pub max_states: usize,
    /// Stop at the first violated `Always` property (for bug hunting).
    pub stop_at_violation: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_states: usize::MAX,
            stop_at_violation: false,
        }
    }
}

/// A 64-bit fingerprint of a state: foldhash's quality hasher with a fixed
/// seed, so the same state has the same fingerprint in every run.
pub(crate) fn fingerprint<S: Hash>(state: &S) -> u64 {
    foldhash::quality::FixedState::default().hash_one(state)
}

/// Keys of the visited map are fingerprints, already uniformly mixed.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 fingerprints are hashed with Identity")
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Visited = HashMap<u64, Origin, BuildHasherDefault<Identity>>;

/// How a visited state was reached.
#[derive(Clone, Copy)]
enum Origin {
    Init(u32),
    Step { parent: u64, action: u32 },
}

/// Explores every reachable state of `model` breadth first.
pub fn explore<M: Model>(model: &M, options: Options) -> Report<M> {
    let start = Instant::now();
    let properties = model.properties();
    let mut found: Vec<Option<u64>> = vec![None; properties.len()];
    let mut seen = Visited::default();
    let mut queue: VecDeque<(M::State, u64, usize)> = VecDeque::new();
    let mut transitions = 0usize;
    let mut max_depth = 0usize;
    let mut complete = true;

    let check = |state: &M::State, fp: u64, found: &mut Vec<Option<u64>>| -> bool {
        let mut violated = false;
        for (i, p) in properties.iter().enumerate() {
            if found[i].is_some() {
                continue;
            }
            let holds = (p.holds)(model, state);
            let hit = match p.expectation {
                Expectation::Always => !holds,
                Expectation::Sometimes => holds,
            };
            if hit {
                found[i] = Some(fp);
                violated |= p.expectation == Expectation::Always;
            }
        }
        violated
    };

    'search: {
        for (i, init) in model.init_states().into_iter().enumerate() {
            let fp = fingerprint(&init);
            if seen.contains_key(&fp) {
                continue;
            }
            seen.insert(fp, Origin::Init(i as u32));
            if check(&init, fp, &mut found) && options.stop_at_violation {
                complete = false;
                break 'search;
            }
            queue.push_back((init, fp, 0));
        }
        let mut actions = Vec::new();
        while let Some((state, fp, depth)) = queue.pop_front() {
            max_depth = max_depth.max(depth);
            actions.clear();
            model.actions(&state, &mut actions);
            for (index, action) in actions.iter().enumerate() {
                transitions += 1;
                let Some(next) = model.next_state(&state, action) else {
                    continue;
                };
                let next_fp = fingerprint(&next);
                if seen.contains_key(&next_fp) {
                    continue;
                }
                seen.insert(
                    next_fp,
                    Origin::Step {
                        parent: fp,
                        action: index as u32,
                    },
                );
                if check(&next, next_fp, &mut found) && options.stop_at_violation {
                    complete = false;
                    break 'search;
                }
                if seen.len() >= options.max_states {
                    complete = false;
                    break 'search;
                }
                queue.push_back((next, next_fp, depth + 1));
            }
        }
    }

    let findings = properties
        .iter()
        .zip(&found)
        .map(|(p, fp)| Finding {
            name: p.name,
            expectation: p.expectation,
            trace: fp.map(|fp| rebuild(model, &seen, fp)),
        })
        .collect();
    Report {
        states: seen.len(),
        transitions,
        max_depth,
        elapsed: start.elapsed(),
        complete,
        findings,
    }
}

/// Replays the recorded actions from the initial state to the state `target`.
fn rebuild<M: Model>(model: &M, seen: &Visited, target: u64) -> Trace<M> {
    let mut path = Vec::new();
    let mut at = target;
    let init_index = loop {
        match seen[&at] {
            Origin::Init(i) => break i as usize,
            Origin::Step { parent, action } => {
                path.push(action as usize);
                at = parent;
            }
        }
    };
    path.reverse();
    let init = model.init_states().swap_remove(init_index);
    let mut state = init.clone();
    let mut steps = Vec::with_capacity(path.len());
    let mut actions = Vec::new();
    for index in path {
        actions.clear();
        model.actions(&state, &mut actions);
        let action = actions[index].clone();
        state = model
            .next_state(&state, &action)
            .expect("a recorded action changes the state on replay");
        steps.push((action, state.clone()));
    }
    Trace { init, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two counters that each go up to 3; "both reach 3" is reachable and
    /// "their sum stays below 5" is not always true.
    struct Counters;

    impl Model for Counters {
        type State = (u8, u8);
        type Action = usize;

        fn init_states(&self) -> Vec<(u8, u8)> {
            vec![(0, 0)]
        }

        fn actions(&self, s: &(u8, u8), actions: &mut Vec<usize>) {
            if s.0 < 3 {
                actions.push(0);
            }
            if s.1 < 3 {
                actions.push(1);
            }
        }

        fn next_state(&self, s: &(u8, u8), a: &usize) -> Option<(u8, u8)> {
            Some(if *a == 0 {
                (s.0 + 1, s.1)
            } else {
                (s.0, s.1 + 1)
            })
        }

        fn properties(&self) -> Vec<Property<Self>> {
            vec![
                Property {
                    name: "sum below 5",
                    expectation: Expectation::Always,
                    holds: |_, s| s.0 + s.1 < 5,
                },
                Property {
                    name: "both at 3",
                    expectation: Expectation::Sometimes,
                    holds: |_, s| *s == (3, 3),
                },
            ]
        }
    }

    #[test]
    fn explores_every_state_and_finds_shortest_traces() {
        let report = explore(&Counters, Options::default());
        assert_eq!(report.states, 16);
        assert!(report.complete);
        assert_eq!(report.max_depth, 6);
        let cex = report.counterexample("sum below 5").expect("violated");
        assert_eq!(cex.steps.len(), 5, "BFS gives the shortest counterexample");
        let (a, b) = *cex.last_state();
        assert_eq!(a + b, 5);
        let witness = report.findings[1].trace.as_ref().expect("reachable");
        assert_eq!(*witness.last_state(), (3, 3));
        assert!(!report.ok());
    }

    #[test]
    fn stops_early_when_asked() {
        let options = Options {
            stop_at_violation: true,
            ..Options::default()
        };
        let report = explore(&Counters, options);
        assert!(!report.complete);
        assert!(report.states < 16);
        assert!(report.counterexample("sum below 5").is_some());
    }
}
