//! Runs a DAG of jobs: checks each job once its dependencies are done, runs the ones that
//! must run in parallel under resource pools, longest critical path first. A job whose
//! results may be had without running it (`Check::Restorable`) is first given to
//! `JobHandler::restore` on its own thread, holding no resources, and runs only if that
//! fails. It knows nothing of stages, processes or caches: an `JobHandler` checks, restores
//! and runs, an observer hears events.

mod resources;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) use resources::{Capacity, GpuRequest, Lease, Pools, Request};

/// One node of the DAG.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub deps: Vec<usize>,
    pub request: Request,
    /// How long the job took last time (0 when unknown), for critical-path ordering.
    pub estimate_ms: u64,
    /// Whether the job runs even when a dependency is unavailable on this machine (a
    /// report covers the artifacts that exist); otherwise it is not run either.
    pub tolerates_unavailable: bool,
}

/// Whether a job must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    UpToDate,
    Run(String),
    /// It must run (the reason), unless `JobHandler::restore` can produce its results.
    Restorable(String),
    Failed(Failure),
    /// It cannot run on this machine (e.g. no TensorRT or no GPU); not a failure.
    Unavailable(String),
}

/// Why a job failed: what happened, what to do, and where its log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub log: Option<std::path::PathBuf>,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            hint: None,
            log: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunResult {
    Done,
    Failed(Failure),
    Cancelled,
}

/// What happened to a job in this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Up to date: not run.
    Skipped,
    /// Ran and succeeded; with the reason it ran.
    Ran(String),
    /// Its results were restored instead of running it; with where they came from.
    Restored(String),
    Failed(Failure),
    /// Not run because dependency `0` failed or did not run.
    Blocked(usize),
    /// Not started: the build stopped (a failure without keep-going, or an interrupt).
    Stopped,
    Cancelled,
    /// Not run: it cannot run on this machine (the reason says what is missing).
    Unavailable(String),
    /// Not run: dependency `0` is unavailable on this machine (or needs one that is).
    NeedsUnavailable(usize),
}

impl Outcome {
    pub(crate) fn is_success(&self) -> bool {
        matches!(
            self,
            Outcome::Skipped | Outcome::Ran(_) | Outcome::Restored(_)
        )
    }

    /// Whether the build fails because of this outcome (an unavailable stage does not fail it).
    pub(crate) fn is_failure(&self) -> bool {
        !self.is_success() && !self.is_unavailable()
    }

    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, Outcome::Unavailable(_) | Outcome::NeedsUnavailable(_))
    }
}

/// Checks and runs jobs; called from worker threads.
pub(crate) trait JobHandler: Send + Sync + 'static {
    fn check(&self, job: usize) -> Check;
    /// Produces the results of a job checked `Restorable` without running it (from a
    /// cache): `Some(where from)` when it did, `None` to run it. Called on a thread of its
    /// own before the job gets resources; it must leave nothing behind when it fails.
    fn restore(&self, _job: usize) -> Option<String> {
        None
    }
    fn run(&self, job: usize, lease: &Lease) -> RunResult;
}

/// What the scheduler reports as it goes.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    Started {
        job: usize,
        lease: &'a Lease,
        reason: &'a str,
    },
    Finished {
        job: usize,
        outcome: &'a Outcome,
        duration: Duration,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub keep_going: bool,
    pub cancel: Arc<AtomicBool>,
}

enum Message {
    Checked(usize, Check),
    Restored(usize, Option<String>, Duration),
    Finished(usize, RunResult, Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Waiting(usize),
    Checking,
    /// Waiting for or in `JobHandler::restore`; the reason it runs if that fails.
    Restoring(String),
    Ready(String),
    Running(Lease, String),
    Done,
}

/// Runs the jobs marked in `wanted` (their dependencies must be wanted too). `prechecked`
/// holds checks made before the build; one is used only while all of a job's dependencies
/// were up to date, since otherwise its inputs may have changed since.
pub(crate) fn run(
    jobs: &[Job],
    wanted: &[bool],
    prechecked: Vec<Option<Check>>,
    capacity: Capacity,
    handler: Arc<dyn JobHandler>,
    options: &Options,
    observer: &mut dyn FnMut(Event),
) -> Vec<Option<Outcome>> {
    let mut scheduler = Scheduler::new(jobs, wanted, prechecked, capacity, handler, options);
    scheduler.start();
    scheduler.drive(observer);
    scheduler.outcomes
}

struct Scheduler<'a> {
    jobs: &'a [Job],
    wanted: &'a [bool],
    dependents: Vec<Vec<usize>>,
    priority: Vec<u64>,
    prechecked: Vec<Option<Check>>,
    all_deps_skipped: Vec<bool>,
    states: Vec<State>,
    outcomes: Vec<Option<Outcome>>,
    ready: BinaryHeap<(u64, Reverse<usize>)>,
    pools: Pools,
    handler: Arc<dyn JobHandler>,
    options: &'a Options,
    sender: mpsc::Sender<Message>,
    receiver: mpsc::Receiver<Message>,
    in_flight: usize,
    stopping: bool,
    pending: std::collections::VecDeque<(usize, Outcome, bool)>,
    /// Jobs that became ready and need a check (no usable precheck).
    to_check: Vec<usize>,
    /// `Restorable` jobs waiting for a restore thread, and how many restores are running.
    to_restore: std::collections::VecDeque<usize>,
    restoring: usize,
    /// At most this many restores at once (the cpu slots: a restore hashes what it copies).
    restore_slots: usize,
}

/// Up to this many checks that come due together run on the scheduler's thread: a check
/// after an upstream ran is a stat and a cache hit, cheaper than waking the thread pool
/// (whose idle spinning cost a 1,000-stage chain a tenth of its time on 2 cores).
const INLINE_CHECKS: usize = 2;

impl<'a> Scheduler<'a> {
    fn new(
        jobs: &'a [Job],
        wanted: &'a [bool],
        prechecked: Vec<Option<Check>>,
        capacity: Capacity,
        handler: Arc<dyn JobHandler>,
        options: &'a Options,
    ) -> Self {
        let mut dependents = vec![Vec::new(); jobs.len()];
        for (job, spec) in jobs.iter().enumerate() {
            for &dep in &spec.deps {
                dependents[dep].push(job);
            }
        }
        let priority = critical_paths(jobs, &dependents);
        let (sender, receiver) = mpsc::channel();
        let restore_slots = capacity.cpu.max(1) as usize;
        Scheduler {
            jobs,
            wanted,
            dependents,
            priority,
            prechecked,
            all_deps_skipped: vec![true; jobs.len()],
            states: jobs
                .iter()
                .map(|job| State::Waiting(job.deps.len()))
                .collect(),
            outcomes: vec![None; jobs.len()],
            ready: BinaryHeap::new(),
            pools: Pools::new(capacity),
            handler,
            options,
            sender,
            receiver,
            in_flight: 0,
            stopping: false,
            pending: std::collections::VecDeque::new(),
            to_check: Vec::new(),
            to_restore: std::collections::VecDeque::new(),
            restoring: 0,
            restore_slots,
        }
    }

    fn start(&mut self) {
        for job in 0..self.jobs.len() {
            if self.wanted[job] && self.jobs[job].deps.is_empty() {
                self.become_ready(job);
            }
        }
    }

    fn drive(&mut self, observer: &mut dyn FnMut(Event)) {
        loop {
            if self.options.cancel.load(Ordering::Relaxed) && !self.stopping {
                self.stopping = true;
            }
            self.process_pending(observer);
            self.run_checks(observer);
            self.start_restores();
            self.start_ready(observer);
            if self.in_flight == 0 && self.pending.is_empty() && self.to_check.is_empty() {
                break;
            }
            match self.receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(Message::Checked(job, check)) => {
                    self.in_flight -= 1;
                    self.on_check(job, check, observer);
                }
                Ok(Message::Restored(job, source, duration)) => {
                    self.in_flight -= 1;
                    self.restoring -= 1;
                    self.on_restored(job, source, duration, observer);
                }
                Ok(Message::Finished(job, result, duration)) => {
                    self.in_flight -= 1;
                    self.on_finished(job, result, duration, observer);
                }
                Err(_) => {}
            }
        }
        self.stop_remaining();
    }

    fn become_ready(&mut self, job: usize) {
        let usable = self.all_deps_skipped[job];
        match self.prechecked[job].take().filter(|_| usable) {
            Some(check) => self.deliver_check(job, check),
            None => {
                self.states[job] = State::Checking;
                self.to_check.push(job);
            }
        }
    }

    /// Checks the jobs that came due: a few here, more in parallel on rayon's pool.
    fn run_checks(&mut self, observer: &mut dyn FnMut(Event)) {
        while !self.to_check.is_empty() {
            let jobs = std::mem::take(&mut self.to_check);
            if jobs.len() > INLINE_CHECKS {
                for job in jobs {
                    self.in_flight += 1;
                    let handler = Arc::clone(&self.handler);
                    let sender = self.sender.clone();
                    rayon::spawn(move || {
                        let check = handler.check(job);
                        let _ = sender.send(Message::Checked(job, check));
                    });
                }
                return;
            }
            for job in jobs {
                let check = self.handler.check(job);
                self.deliver_check(job, check);
            }
            self.process_pending(observer);
        }
    }

    fn deliver_check(&mut self, job: usize, check: Check) {
        match check {
            Check::UpToDate => self.pending.push_back((job, Outcome::Skipped, false)),
            Check::Run(reason) => {
                self.states[job] = State::Ready(reason);
                self.ready.push((self.priority[job], Reverse(job)));
            }
            Check::Restorable(reason) => {
                self.states[job] = State::Restoring(reason);
                self.to_restore.push_back(job);
            }
            Check::Failed(message) => self
                .pending
                .push_back((job, Outcome::Failed(message), true)),
            Check::Unavailable(reason) => {
                self.pending
                    .push_back((job, Outcome::Unavailable(reason), true))
            }
        }
    }

    fn on_check(&mut self, job: usize, check: Check, observer: &mut dyn FnMut(Event)) {
        self.deliver_check(job, check);
        self.process_pending(observer);
    }

    /// Starts restores while there are free restore slots (none once the build stops).
    fn start_restores(&mut self) {
        while !self.stopping && self.restoring < self.restore_slots {
            let Some(job) = self.to_restore.pop_front() else {
                break;
            };
            self.in_flight += 1;
            self.restoring += 1;
            let handler = Arc::clone(&self.handler);
            let sender = self.sender.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let source = handler.restore(job);
                let _ = sender.send(Message::Restored(job, source, started.elapsed()));
            });
        }
    }

    /// A restored job is done; one that was not restored waits for resources to run.
    fn on_restored(
        &mut self,
        job: usize,
        source: Option<String>,
        duration: Duration,
        observer: &mut dyn FnMut(Event),
    ) {
        let reason = match std::mem::replace(&mut self.states[job], State::Done) {
            State::Restoring(reason) => reason,
            _ => String::new(),
        };
        match source {
            Some(source) => {
                let outcome = Outcome::Restored(source);
                observer(Event::Finished {
                    job,
                    outcome: &outcome,
                    duration,
                });
                self.pending.push_back((job, outcome, false));
                self.process_pending(observer);
            }
            None => {
                self.states[job] = State::Ready(reason);
                self.ready.push((self.priority[job], Reverse(job)));
            }
        }
    }

    fn on_finished(
        &mut self,
        job: usize,
        result: RunResult,
        duration: Duration,
        observer: &mut dyn FnMut(Event),
    ) {
        let reason = match std::mem::replace(&mut self.states[job], State::Done) {
            State::Running(lease, reason) => {
                self.pools.release(&lease);
                reason
            }
            _ => String::new(),
        };
        let outcome = match result {
            RunResult::Done => Outcome::Ran(reason),
            RunResult::Failed(message) => Outcome::Failed(message),
            RunResult::Cancelled => Outcome::Cancelled,
        };
        observer(Event::Finished {
            job,
            outcome: &outcome,
            duration,
        });
        self.pending.push_back((job, outcome, false));
        self.process_pending(observer);
    }

    fn start_ready(&mut self, observer: &mut dyn FnMut(Event)) {
        let mut deferred = Vec::new();
        // Every local job takes at least one cpu slot and every remote one a remote slot, so
        // with none free nothing can start: stop before scanning (with thousands of ready
        // jobs, scanning each time is quadratic).
        while !self.stopping && self.pools.has_free_slot() {
            let Some((priority, Reverse(job))) = self.ready.pop() else {
                break;
            };
            let request = self.jobs[job].request;
            if let Some(why) = self.pools.impossible(&request) {
                let outcome = Outcome::Failed(Failure::new(format!(
                    "this stage can never run here: {why}"
                )));
                self.pending.push_back((job, outcome, true));
                self.process_pending(observer);
                continue;
            }
            match self.pools.try_lease(&request) {
                Some(lease) => self.launch(job, lease, observer),
                None => deferred.push((priority, Reverse(job))),
            }
        }
        self.ready.extend(deferred);
    }

    fn launch(&mut self, job: usize, lease: Lease, observer: &mut dyn FnMut(Event)) {
        let State::Ready(reason) = std::mem::replace(&mut self.states[job], State::Done) else {
            return;
        };
        observer(Event::Started {
            job,
            lease: &lease,
            reason: &reason,
        });
        self.states[job] = State::Running(lease.clone(), reason);
        self.in_flight += 1;
        let handler = Arc::clone(&self.handler);
        let sender = self.sender.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = handler.run(job, &lease);
            let _ = sender.send(Message::Finished(job, result, started.elapsed()));
        });
    }

    /// Applies finished jobs to their dependents, one at a time (no recursion, so a chain
    /// of ten thousand up-to-date stages needs no deep stack).
    fn process_pending(&mut self, observer: &mut dyn FnMut(Event)) {
        while let Some((job, outcome, announce)) = self.pending.pop_front() {
            if announce {
                observer(Event::Finished {
                    job,
                    outcome: &outcome,
                    duration: Duration::ZERO,
                });
            }
            self.states[job] = State::Done;
            let success = outcome.is_success();
            let skipped = outcome == Outcome::Skipped;
            if outcome.is_failure() && !self.options.keep_going {
                self.stopping = true;
            }
            let unavailable = outcome.is_unavailable();
            self.outcomes[job] = Some(outcome);
            for index in 0..self.dependents[job].len() {
                let dependent = self.dependents[job][index];
                if !self.wanted[dependent] {
                    continue;
                }
                let tolerated = unavailable && self.jobs[dependent].tolerates_unavailable;
                if !success && !tolerated {
                    self.block_from(dependent, job, unavailable);
                    continue;
                }
                self.all_deps_skipped[dependent] &= skipped;
                if let State::Waiting(remaining) = &mut self.states[dependent] {
                    *remaining -= 1;
                    if *remaining == 0 {
                        self.become_ready(dependent);
                    }
                }
            }
        }
    }

    /// Marks `start` and everything downstream of it as blocked by `failed` (or, downstream
    /// of an unavailable job, as needing an unavailable stage).
    fn block_from(&mut self, start: usize, failed: usize, unavailable: bool) {
        let mut stack: Vec<(usize, usize)> = vec![(start, failed)];
        while let Some((job, because)) = stack.pop() {
            if !self.wanted[job] || self.states[job] == State::Done {
                continue;
            }
            self.states[job] = State::Done;
            self.outcomes[job] = Some(if unavailable {
                Outcome::NeedsUnavailable(because)
            } else {
                Outcome::Blocked(because)
            });
            stack.extend(self.dependents[job].iter().map(|&d| (d, job)));
        }
    }

    /// Everything wanted that never finished is marked as stopped or cancelled.
    fn stop_remaining(&mut self) {
        let cancelled = self.options.cancel.load(Ordering::Relaxed);
        for job in 0..self.jobs.len() {
            if self.wanted[job] && self.outcomes[job].is_none() {
                self.outcomes[job] = Some(if cancelled {
                    Outcome::Cancelled
                } else {
                    Outcome::Stopped
                });
            }
        }
    }
}

/// Each job's longest path to a sink, counting its own estimate. A job with no estimate
/// (never run) counts as the mean of the known ones, so that with no durations at all the
/// path length in jobs decides, and a new job weighs like a typical one, not like 0 ms.
fn critical_paths(jobs: &[Job], dependents: &[Vec<usize>]) -> Vec<u64> {
    let known: Vec<u64> = jobs
        .iter()
        .map(|j| j.estimate_ms)
        .filter(|&e| e > 0)
        .collect();
    let typical = match known.len() {
        0 => 1,
        n => (known.iter().sum::<u64>() / n as u64).max(1),
    };
    let order = topological(jobs, dependents);
    let mut longest = vec![0u64; jobs.len()];
    for &job in order.iter().rev() {
        let tail = dependents[job]
            .iter()
            .map(|&d| longest[d])
            .max()
            .unwrap_or(0);
        let own = match jobs[job].estimate_ms {
            0 => typical,
            known => known,
        };
        longest[job] = own + tail;
    }
    longest
}

fn topological(jobs: &[Job], dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut remaining: Vec<usize> = jobs.iter().map(|job| job.deps.len()).collect();
    let mut order: Vec<usize> = (0..jobs.len()).filter(|&j| remaining[j] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let job = order[next];
        next += 1;
        for &dependent in &dependents[job] {
            remaining[dependent] -= 1;
            if remaining[dependent] == 0 {
                order.push(dependent);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests;
