//! Scheduler tests with `FakeJobHandler`, a test double that records what ran, when, and on
//! which GPU, instead of running processes.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// What the fake saw of one run: job, start, end, GPU.
type RunEntry = (usize, Instant, Instant, Option<u32>);

#[derive(Default)]
struct FakeJobHandler {
    checks: HashMap<usize, Check>,
    failures: Vec<usize>,
    sleep_ms: u64,
    log: Mutex<Vec<RunEntry>>,
    /// Jobs `restore` succeeds for; every restore asked for, with when it ended.
    restorable: Vec<usize>,
    restores: Mutex<Vec<(usize, Instant)>>,
}

impl JobHandler for FakeJobHandler {
    fn check(&self, job: usize) -> Check {
        self.checks
            .get(&job)
            .cloned()
            .unwrap_or(Check::Run("never built".into()))
    }

    fn restore(&self, job: usize) -> Option<String> {
        std::thread::sleep(Duration::from_millis(5));
        self.restores.lock().unwrap().push((job, Instant::now()));
        self.restorable
            .contains(&job)
            .then(|| "stand-in cache".to_string())
    }

    fn run(&self, job: usize, lease: &Lease) -> RunResult {
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        self.log
            .lock()
            .unwrap()
            .push((job, start, Instant::now(), lease.gpu));
        if self.failures.contains(&job) {
            RunResult::Failed(Failure::new("boom"))
        } else {
            RunResult::Done
        }
    }
}

fn job(deps: &[usize]) -> Job {
    Job {
        deps: deps.to_vec(),
        request: Request {
            cpu: 1,
            memory: 0,
            gpu: GpuRequest::None,
            remote: false,
        },
        estimate_ms: 0,
        tolerates_unavailable: false,
    }
}

fn capacity(cpu: u32, gpus: &[u32]) -> Capacity {
    Capacity {
        cpu,
        memory: 1 << 30,
        gpus: gpus.to_vec(),
        remote: 0,
    }
}

fn options(keep_going: bool) -> Options {
    Options {
        keep_going,
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

fn schedule(
    jobs: &[Job],
    handler: Arc<FakeJobHandler>,
    capacity: Capacity,
    keep_going: bool,
) -> Vec<Option<Outcome>> {
    let wanted = vec![true; jobs.len()];
    // As in a real build, every job is prechecked (through the handler), so all roots are
    // ready at once.
    let prechecked = (0..jobs.len())
        .map(|job| Some(handler.check(job)))
        .collect();
    run(
        jobs,
        &wanted,
        prechecked,
        capacity,
        handler,
        &options(keep_going),
        &mut |_| {},
    )
}

#[test]
fn gpu_leases_never_overlap() {
    let mut jobs: Vec<Job> = (0..8).map(|_| job(&[])).collect();
    for (index, job) in jobs.iter_mut().enumerate() {
        job.request.gpu = if index % 3 == 0 {
            GpuRequest::Id(1)
        } else {
            GpuRequest::Any
        };
    }
    let handler = Arc::new(FakeJobHandler {
        sleep_ms: 30,
        ..Default::default()
    });
    let outcomes = schedule(&jobs, Arc::clone(&handler), capacity(8, &[0, 1]), false);
    assert!(outcomes.iter().all(|o| matches!(o, Some(Outcome::Ran(_)))));
    let log = handler.log.lock().unwrap();
    assert_eq!(log.len(), 8);
    for (i, a) in log.iter().enumerate() {
        assert!(a.3.is_some(), "every job got a GPU");
        for b in log.iter().skip(i + 1) {
            let overlap = a.1 < b.2 && b.1 < a.2;
            assert!(
                !(overlap && a.3 == b.3),
                "jobs {} and {} shared GPU {:?}",
                a.0,
                b.0,
                a.3
            );
        }
    }
    let on_one: Vec<_> = log
        .iter()
        .filter(|entry| jobs[entry.0].request.gpu == GpuRequest::Id(1))
        .collect();
    assert!(on_one.iter().all(|entry| entry.3 == Some(1)));
}

#[test]
fn longest_critical_path_starts_first() {
    // 0 -> 1 -> 2 is a long chain; 3 is a lone short job. With one slot, 0 goes first.
    let mut jobs = vec![job(&[]), job(&[0]), job(&[1]), job(&[])];
    jobs[0].estimate_ms = 10;
    jobs[1].estimate_ms = 10;
    jobs[2].estimate_ms = 10;
    jobs[3].estimate_ms = 25;
    let handler = Arc::new(FakeJobHandler::default());
    // As in a real build, every job is prechecked, so both roots are ready at once.
    let prechecked = vec![Some(Check::Run("never built".into())); jobs.len()];
    let wanted = vec![true; jobs.len()];
    run(
        &jobs,
        &wanted,
        prechecked,
        capacity(1, &[]),
        handler.clone(),
        &options(false),
        &mut |_| {},
    );
    let order: Vec<usize> = handler.log.lock().unwrap().iter().map(|e| e.0).collect();
    assert_eq!(
        order[0], 0,
        "the 30 ms chain outranks the 25 ms job: {order:?}"
    );
}

/// The order in which one slot runs `jobs`.
fn order_on_one_slot(jobs: &[Job]) -> Vec<usize> {
    let handler = Arc::new(FakeJobHandler::default());
    schedule(jobs, Arc::clone(&handler), capacity(1, &[]), false);
    let log = handler.log.lock().unwrap();
    log.iter().map(|e| e.0).collect()
}

#[test]
fn without_durations_the_longest_chain_in_stages_starts_first() {
    // Twelve lone jobs (0..12) named before a chain of three (12 -> 13 -> 14).
    let mut jobs: Vec<Job> = (0..12).map(|_| job(&[])).collect();
    jobs.extend([job(&[]), job(&[12]), job(&[13])]);
    assert_eq!(order_on_one_slot(&jobs)[0], 12);
}

#[test]
fn a_job_never_run_weighs_like_a_typical_one() {
    // A known 1000 ms lone job (0) against a chain of three jobs never run (1 -> 2 -> 3):
    // counted as typical (1000 ms each), the chain is longer and goes first.
    let mut jobs = vec![job(&[]), job(&[]), job(&[1]), job(&[2])];
    jobs[0].estimate_ms = 1000;
    assert_eq!(order_on_one_slot(&jobs)[0], 1);
}

#[test]
fn a_failure_blocks_dependents_and_stops_the_build() {
    // 0 fails; 1 depends on it; 2 is independent but waits behind it on one slot.
    let jobs = vec![job(&[]), job(&[0]), job(&[])];
    let handler = Arc::new(FakeJobHandler {
        failures: vec![0],
        ..Default::default()
    });
    let mut jobs_long = jobs.clone();
    jobs_long[0].estimate_ms = 100;
    let outcomes = schedule(&jobs_long, handler, capacity(1, &[]), false);
    assert_eq!(outcomes[0], Some(Outcome::Failed(Failure::new("boom"))));
    assert_eq!(outcomes[1], Some(Outcome::Blocked(0)));
    assert_eq!(outcomes[2], Some(Outcome::Stopped));
}

#[test]
fn keep_going_runs_independent_jobs() {
    let mut jobs = vec![job(&[]), job(&[0]), job(&[])];
    jobs[0].estimate_ms = 100;
    let handler = Arc::new(FakeJobHandler {
        failures: vec![0],
        ..Default::default()
    });
    let outcomes = schedule(&jobs, handler, capacity(1, &[]), true);
    assert_eq!(outcomes[1], Some(Outcome::Blocked(0)));
    assert!(matches!(outcomes[2], Some(Outcome::Ran(_))));
}

#[test]
fn up_to_date_jobs_are_skipped_and_a_long_chain_needs_no_deep_stack() {
    let jobs: Vec<Job> = (0..20_000)
        .map(|i| if i == 0 { job(&[]) } else { job(&[i - 1]) })
        .collect();
    let handler = Arc::new(FakeJobHandler::default());
    let wanted = vec![true; jobs.len()];
    let prechecked = vec![Some(Check::UpToDate); jobs.len()];
    let outcomes = run(
        &jobs,
        &wanted,
        prechecked,
        capacity(2, &[]),
        handler.clone(),
        &options(false),
        &mut |_| {},
    );
    assert!(outcomes.iter().all(|o| *o == Some(Outcome::Skipped)));
    assert!(handler.log.lock().unwrap().is_empty());
}

#[test]
fn a_precheck_is_not_trusted_after_an_upstream_ran() {
    // 0 must run; 1 was prechecked up to date, but its input changes when 0 runs.
    let jobs = vec![job(&[]), job(&[0])];
    let handler = Arc::new(FakeJobHandler::default());
    let prechecked = vec![Some(Check::Run("changed".into())), Some(Check::UpToDate)];
    let outcomes = run(
        &jobs,
        &[true, true],
        prechecked,
        capacity(1, &[]),
        handler,
        &options(false),
        &mut |_| {},
    );
    assert!(
        matches!(outcomes[1], Some(Outcome::Ran(_))),
        "re-checked, and the fake says run: {outcomes:?}"
    );
}

#[test]
fn impossible_requests_fail_at_once() {
    let mut jobs = vec![job(&[]), job(&[0])];
    jobs[0].request.gpu = GpuRequest::Any;
    let handler = Arc::new(FakeJobHandler::default());
    let outcomes = schedule(&jobs, Arc::clone(&handler), capacity(2, &[]), false);
    assert!(matches!(&outcomes[0], Some(Outcome::Failed(f)) if f.message.contains("GPU")));
    assert_eq!(outcomes[1], Some(Outcome::Blocked(0)));
    assert!(handler.log.lock().unwrap().is_empty());
}

#[test]
fn parallel_jobs_respect_the_cpu_pool() {
    let jobs: Vec<Job> = (0..6).map(|_| job(&[])).collect();
    let handler = Arc::new(FakeJobHandler {
        sleep_ms: 20,
        ..Default::default()
    });
    schedule(&jobs, Arc::clone(&handler), capacity(2, &[]), false);
    let log = handler.log.lock().unwrap();
    // Sweep over start (+1) and end (-1) instants; an end sorts before a start at the same instant.
    let mut events: Vec<(Instant, i32)> = log.iter().flat_map(|e| [(e.1, 1), (e.2, -1)]).collect();
    events.sort();
    let mut running = 0;
    let mut most = 0;
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 2, "at most 2 at once, saw {most}");
    assert_eq!(log.len(), 6);
}

#[test]
fn an_unavailable_job_marks_its_dependents_and_does_not_stop_the_build() {
    // 0 is unavailable (e.g. a TensorRT engine on a machine without a GPU); 1 needs it,
    // 2 needs 1; 3 is independent and still runs without keep-going.
    let mut jobs = vec![job(&[]), job(&[0]), job(&[1]), job(&[])];
    jobs[0].estimate_ms = 100;
    let handler = Arc::new(FakeJobHandler {
        checks: HashMap::from([(0, Check::Unavailable("no GPU".into()))]),
        ..Default::default()
    });
    let outcomes = schedule(&jobs, handler, capacity(1, &[]), false);
    assert_eq!(outcomes[0], Some(Outcome::Unavailable("no GPU".into())));
    assert_eq!(outcomes[1], Some(Outcome::NeedsUnavailable(0)));
    assert_eq!(outcomes[2], Some(Outcome::NeedsUnavailable(1)));
    assert!(matches!(outcomes[3], Some(Outcome::Ran(_))));
    assert!(outcomes.iter().flatten().all(|o| !o.is_failure()));
}

#[test]
fn a_job_that_tolerates_unavailable_dependencies_still_runs() {
    // 0 is unavailable; 1 (a report, say) tolerates it and runs; 2 needs 1 and runs too.
    let mut jobs = vec![job(&[]), job(&[0]), job(&[1])];
    jobs[1].tolerates_unavailable = true;
    let handler = Arc::new(FakeJobHandler {
        checks: HashMap::from([(0, Check::Unavailable("no GPU".into()))]),
        ..Default::default()
    });
    let outcomes = schedule(&jobs, handler, capacity(1, &[]), false);
    assert_eq!(outcomes[0], Some(Outcome::Unavailable("no GPU".into())));
    assert!(matches!(outcomes[1], Some(Outcome::Ran(_))), "{outcomes:?}");
    assert!(matches!(outcomes[2], Some(Outcome::Ran(_))), "{outcomes:?}");
}

#[test]
fn a_restored_job_does_not_run_and_its_dependents_are_checked_again() {
    // 0 is restorable and restores; 1 was prechecked up to date, but 0's restore changed
    // its input: it is checked again (the fake says run).
    let jobs = vec![job(&[]), job(&[0])];
    let handler = Arc::new(FakeJobHandler {
        restorable: vec![0],
        ..Default::default()
    });
    let prechecked = vec![
        Some(Check::Restorable("changed".into())),
        Some(Check::UpToDate),
    ];
    let outcomes = run(
        &jobs,
        &[true, true],
        prechecked,
        capacity(1, &[]),
        handler.clone(),
        &options(false),
        &mut |_| {},
    );
    assert_eq!(
        outcomes[0],
        Some(Outcome::Restored("stand-in cache".into()))
    );
    assert!(matches!(outcomes[1], Some(Outcome::Ran(_))), "{outcomes:?}");
    let ran: Vec<usize> = handler.log.lock().unwrap().iter().map(|e| e.0).collect();
    assert_eq!(ran, [1], "the restored job never ran");
}

#[test]
fn a_job_that_is_not_restored_runs() {
    let jobs = vec![job(&[]), job(&[0])];
    let mut checks = HashMap::new();
    checks.insert(0, Check::Restorable("never built".into()));
    let handler = Arc::new(FakeJobHandler {
        checks,
        ..Default::default()
    });
    let outcomes = schedule(&jobs, handler.clone(), capacity(1, &[]), false);
    assert!(matches!(outcomes[0], Some(Outcome::Ran(_))), "{outcomes:?}");
    assert!(matches!(outcomes[1], Some(Outcome::Ran(_))), "{outcomes:?}");
    let restores: Vec<usize> = handler
        .restores
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        restores,
        [0],
        "only the restorable job was offered to restore"
    );
}

#[test]
fn a_restore_holds_no_resources() {
    // One cpu slot and one GPU, both taken by job 0 for 500 ms: job 1 (which asks for the
    // GPU too) is restored meanwhile instead of waiting for them.
    let mut jobs = vec![job(&[]), job(&[])];
    for job in &mut jobs {
        job.request.gpu = GpuRequest::Any;
    }
    let mut checks = HashMap::new();
    checks.insert(1, Check::Restorable("never built".into()));
    let handler = Arc::new(FakeJobHandler {
        checks,
        restorable: vec![1],
        sleep_ms: 500,
        ..Default::default()
    });
    let outcomes = schedule(&jobs, handler.clone(), capacity(1, &[0]), false);
    assert!(matches!(outcomes[0], Some(Outcome::Ran(_))));
    assert!(matches!(outcomes[1], Some(Outcome::Restored(_))));
    let run_end = handler.log.lock().unwrap()[0].2;
    let restore_end = handler.restores.lock().unwrap()[0].1;
    assert!(
        restore_end < run_end,
        "the restore waited for the running job"
    );
}

/// The most runs of `jobs` that overlapped in time.
fn peak_overlap(log: &[RunEntry], jobs: &[usize]) -> usize {
    let runs: Vec<&RunEntry> = log.iter().filter(|r| jobs.contains(&r.0)).collect();
    runs.iter()
        .map(|a| runs.iter().filter(|b| b.1 <= a.1 && a.1 < b.2).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn remote_jobs_take_no_local_slot_and_are_bounded_by_their_own() {
    // One cpu slot, held by long local jobs; six remote jobs, at most three at once.
    let mut jobs: Vec<Job> = (0..8).map(|_| job(&[])).collect();
    for job in jobs.iter_mut().skip(2) {
        job.request.remote = true;
        job.request.memory = 1 << 40; // more than the machine has: remote jobs never ask
        job.request.gpu = GpuRequest::Any; // nor for a GPU this machine lacks
    }
    let handler = Arc::new(FakeJobHandler {
        sleep_ms: 40,
        ..Default::default()
    });
    let mut pools = capacity(1, &[]);
    pools.remote = 3;
    let outcomes = schedule(&jobs, Arc::clone(&handler), pools, false);
    assert!(
        outcomes.iter().flatten().all(Outcome::is_success),
        "{outcomes:?}"
    );
    let log = handler.log.lock().unwrap();
    let remote: Vec<usize> = (2..8).collect();
    assert_eq!(peak_overlap(&log, &remote), 3, "{log:?}");
    assert_eq!(peak_overlap(&log, &[0, 1]), 1);
    // Remote jobs ran while a local one held the only cpu slot.
    let overlaps = |a: &RunEntry, b: &RunEntry| a.1 < b.2 && b.1 < a.2;
    assert!(
        log.iter()
            .filter(|l| l.0 < 2)
            .any(|l| log.iter().any(|r| r.0 >= 2 && overlaps(l, r))),
        "{log:?}"
    );
}
