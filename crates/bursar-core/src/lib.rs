//! The pure domain core of bursar: money, ids, enrollments, the operations of
//! the contract as a pure function of state, operation and time, and the
//! hash-chained ledger, and the digests that commit to all of it.
//!
//! Nothing in this crate does I/O or reads a clock: time is passed in, so
//! every rule here is deterministic and testable on its own.

pub mod batch;
pub mod digest;
pub mod enrollment;
pub mod event;
pub mod hold;
pub mod ids;
pub mod intake;
pub mod ledger;
pub mod money;
#[cfg(feature = "openapi")]
mod openapi;
pub mod operation;
pub mod time;

pub use batch::{
    BatchInput, BatchPlan, HoldGone, IntakeRequest, Outcome, StoredOperation, plan_batch,
};
pub use digest::{
    DIGEST_FINDINGS_MAX, Digest, DigestCheck, DigestFinding, DigestFold, DigestFound, DigestRow,
    FindingKind, Positions, root_step,
};
pub use enrollment::{
    AccessPolicy, AccessStatus, Enrollment, EnrollmentKey, EnrollmentStatus, PaymentStatus,
};
pub use event::{
    EVENTS_PER_ENTRY_MAX, Event, EventData, EventType, Transitions, event_count, event_types,
    events_of, exception_event,
};
pub use hold::{
    HOLD_EXPIRES_IN_SECONDS_DEFAULT, HOLD_EXPIRES_IN_SECONDS_MAX, HOLD_EXPIRES_IN_SECONDS_MIN,
    Hold, HoldAmount, HoldChange, HoldExpiry, HoldState,
};
pub use ids::{CourseId, IdError, IdempotencyKey, Reason, Reference, UserId};
pub use intake::{ExceptionState, IntakeException, Source};
pub use ledger::{
    ChainVerifier, DISAGREEMENTS_PER_ENROLLMENT_MAX, Disagreement, EntryKind, Hash, HoldFields,
    LedgerEntry, verify_chain,
};
pub use money::{Amount, Currency, MoneyError, Price};
pub use operation::{Applied, Command, EnrollTerms, EnrollmentState, Rejection, Request, apply};
pub use time::Timestamp;
