//! SQLite's audit of the whole ledger on every core: one reader streams
//! every enrollment's rows from one read transaction (one snapshot, as
//! before), and worker threads replay and hash them, each enrollment on one
//! worker from its first entry to its last, so every chain is verified in
//! order; the reports are put back together in key order, so the result is
//! the one a single thread gives.

use crate::sqlite::{AuditStep, StoredForAudit, read_for_audit};
use crate::{AuditReport, StoreError, audit_one};
use bursar_core::{ChainVerifier, CourseId, Disagreement, EnrollmentKey, UserId};
use rusqlite::Connection;
use std::sync::mpsc;

/// Worker threads at most: replaying and hashing is what takes the time,
/// and a few cores already outrun the one reader.
const AUDIT_WORKERS_MAX: usize = 4;

/// Steps queued to one worker at most: bounds the audit's memory whatever
/// the ledger's length.
const AUDIT_QUEUE_STEPS_MAX: usize = 4096;

/// What the reader sends a worker, in order.
enum Message {
    Start(usize, EnrollmentKey),
    Step(AuditStep),
    Finish(StoredForAudit),
}

fn empty() -> AuditReport {
    AuditReport {
        ok: true,
        enrollments: 0,
        entries: 0,
        disagreements: Vec::new(),
    }
}

/// The audit of these enrollments (user id, course id), in key order, in
/// the connection's snapshot.
pub(crate) fn audit_keys(
    connection: &Connection,
    keys: Vec<(String, String)>,
) -> Result<AuditReport, StoreError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .clamp(1, AUDIT_WORKERS_MAX);
    let mut reports: Vec<Option<AuditReport>> = (0..keys.len()).map(|_| None).collect();
    std::thread::scope(|scope| -> Result<(), StoreError> {
        let (done, finished) = mpsc::channel::<(usize, AuditReport)>();
        let mut queues = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (queue, steps) = mpsc::sync_channel::<Message>(AUDIT_QUEUE_STEPS_MAX);
            let done = done.clone();
            scope.spawn(move || verify(steps, done));
            queues.push(queue);
        }
        drop(done);
        for (index, (user_id, course_id)) in keys.into_iter().enumerate() {
            let (Ok(user), Ok(course)) = (UserId::parse(&user_id), CourseId::parse(&course_id))
            else {
                let mut report = empty();
                report.disagreements.push(Disagreement {
                    user_id,
                    course_id,
                    seq: None,
                    problem: "the stored ids are not valid ids".into(),
                });
                report.ok = false;
                reports[index] = Some(report);
                continue;
            };
            let key = EnrollmentKey {
                user_id: user,
                course_id: course,
            };
            let queue = &queues[index % workers];
            // A worker only stops when its queue is dropped, so sends fail
            // only if one panicked: the scope then panics too.
            let _ = queue.send(Message::Start(index, key.clone()));
            let read = read_for_audit(connection, &key, |step| {
                let _ = queue.send(Message::Step(step));
            })?;
            let _ = queue.send(Message::Finish(read));
        }
        drop(queues);
        for (index, report) in finished {
            reports[index] = Some(report);
        }
        Ok(())
    })?;
    let mut total = empty();
    for report in reports.into_iter().flatten() {
        total.enrollments += report.enrollments;
        total.entries += report.entries;
        total.disagreements.extend(report.disagreements);
    }
    total.ok = total.disagreements.is_empty();
    Ok(total)
}

/// A worker: verifies each enrollment it is given, in the order given.
fn verify(steps: mpsc::Receiver<Message>, done: mpsc::Sender<(usize, AuditReport)>) {
    let mut current: Option<(usize, ChainVerifier)> = None;
    for message in steps {
        match message {
            Message::Start(index, key) => current = Some((index, ChainVerifier::new(key))),
            Message::Step(step) => {
                if let Some((_, verifier)) = current.as_mut() {
                    match step {
                        AuditStep::Entry(entry) => verifier.push(&entry),
                        AuditStep::Note(problem) => verifier.note(None, problem),
                    }
                }
            }
            Message::Finish(read) => {
                if let Some((index, verifier)) = current.take() {
                    let mut report = empty();
                    audit_one(verifier, read.stored.as_ref(), read.holds, &mut report);
                    let _ = done.send((index, report));
                }
            }
        }
    }
}
