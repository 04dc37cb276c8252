//! Stripe's side of the payment intake: the `Stripe-Signature` check, and
//! the mapping of Stripe's events onto bursar's operations (the contract's
//! §7). Pure apart from the time passed in: the handler resolves links,
//! checks currencies and writes.
//!
//! Only the fields the mapping needs are read, and every other field Stripe
//! sends is tolerated (unlike the rest of the API, which refuses unknown
//! fields): Stripe adds fields to its objects without notice.

use axum::body::Bytes;
use bursar_core::{
    Amount, Command, CourseId, Currency, EnrollmentKey, HoldGone, IdempotencyKey, Reason,
    Reference, Source, UserId,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// How far a signature's timestamp may be from the server's clock, in
/// seconds: Stripe's own libraries' default. It bounds how long a captured
/// request can be replayed, and leaves room for clock skew and Stripe's
/// delivery delay.
pub const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;

/// The largest Stripe event body read. The objects bursar maps are a few
/// kilobytes (a Checkout Session is about 4 KiB; a Charge listing its
/// refunds some more); 1 MiB leaves room for the big objects (invoices with
/// many lines) of event types an endpoint may be subscribed to by mistake,
/// so they are answered 200 ignored rather than 413 and retried by Stripe
/// for days.
pub const STRIPE_EVENT_BYTES_MAX: usize = 1024 * 1024;

/// The processor's name in sources, links and exceptions.
pub const PROCESSOR: &str = "stripe";

/// Why a `Stripe-Signature` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("send exactly one Stripe-Signature header")]
    Repeated,
    #[error("the Stripe-Signature header must be t=<unix time>,v1=<hex signature>[,v1=…]")]
    Malformed,
    #[error(
        "the signature's timestamp is {age} s from the server's time; at most {SIGNATURE_TOLERANCE_SECONDS} s is accepted"
    )]
    Stale { age: i64 },
    #[error("no v1 signature matches the body under any configured secret")]
    Mismatch,
}

/// A parsed `Stripe-Signature` header: its timestamp and its `v1`
/// signatures (the ones that are not 64 hex digits can match nothing and
/// are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub timestamp: i64,
    pub signatures: Vec<[u8; 32]>,
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (index, pair) in bytes.chunks(2).enumerate() {
        out[index] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl SignatureHeader {
    /// `t=<unix>,v1=<hex>[,v1=<hex>…]`, in any order, other schemes (`v0`)
    /// ignored, as Stripe's libraries read it.
    pub fn parse(header: &str) -> Result<SignatureHeader, SignatureError> {
        let mut timestamp = None;
        let mut v1 = 0usize;
        let mut signatures = Vec::new();
        for item in header.split(',') {
            let Some((name, value)) = item.trim().split_once('=') else {
                continue;
            };
            match name {
                "t" if timestamp.is_none() => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| SignatureError::Malformed)?,
                    )
                }
                "v1" => {
                    v1 += 1;
                    signatures.extend(hex32(value));
                }
                _ => {}
            }
        }
        match timestamp {
            Some(timestamp) if v1 > 0 => Ok(SignatureHeader {
                timestamp,
                signatures,
            }),
            _ => Err(SignatureError::Malformed),
        }
    }

    /// Refuses a timestamp farther than the tolerance from `now`.
    pub fn check_age(&self, now_unix: i64) -> Result<(), SignatureError> {
        let age = now_unix.saturating_sub(self.timestamp);
        if age.saturating_abs() > SIGNATURE_TOLERANCE_SECONDS {
            return Err(SignatureError::Stale { age });
        }
        Ok(())
    }
}

/// Equal-time comparison: the time taken does not depend on where the two
/// differ.
fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (a, b) in left.iter().zip(right) {
        difference |= a ^ b;
    }
    difference == 0
}

/// The configured endpoint secrets, each keyed once (an HMAC's key schedule
/// is copied for every request, not recomputed).
#[derive(Clone)]
pub struct StripeSecrets {
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for StripeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StripeSecrets({} secrets)", self.keys.len())
    }
}

impl StripeSecrets {
    /// The secrets as configured (`whsec_…`, the key is the whole string, as
    /// Stripe uses it); blank ones are skipped. `None` when none is left.
    pub fn new(secrets: &[String]) -> Option<StripeSecrets> {
        let keys: Vec<Hmac<Sha256>> = secrets
            .iter()
            .map(|secret| secret.trim())
            .filter(|secret| !secret.is_empty())
            .map(|secret| {
                Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                    .expect("HMAC takes keys of any length")
            })
            .collect();
        (!keys.is_empty()).then_some(StripeSecrets { keys })
    }

    /// Whether some `v1` signature of `header` is HMAC-SHA256 of
    /// `"{t}.{body}"` under some secret. Every secret and every signature is
    /// compared, whichever matches, each in constant time.
    pub fn verify(&self, header: &SignatureHeader, body: &[u8]) -> Result<(), SignatureError> {
        let timestamp = header.timestamp.to_string();
        let mut matched = false;
        for key in &self.keys {
            let mut mac = key.clone();
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected: [u8; 32] = mac.finalize().into_bytes().into();
            for signature in &header.signatures {
                matched |= constant_time_eq(&expected, signature);
            }
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// `t=<timestamp>,v1=<hex>` for `body` under `secret`: what Stripe sends.
/// For tests and load tools.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = bursar_core::Hash(mac.finalize().into_bytes().into());
    format!("t={timestamp},v1={}", digest.to_hex())
}

/// A verified event: its envelope's id and type, and the body, from which
/// the mapping reads the object it needs (typed, in one more pass, without
/// building a tree of the whole event).
#[derive(Debug, Clone)]
pub struct Event {
    pub source: Source,
    body: Bytes,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    data: EnvelopeData<AnyObject>,
}

#[derive(Deserialize)]
struct EnvelopeData<T> {
    object: T,
}

/// The event with its object read as `T`.
#[derive(Deserialize)]
struct Typed<T> {
    data: EnvelopeData<T>,
}

/// Any JSON object, skipped without being kept.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AnyObject;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AnyObject, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(AnyObject)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Reads the envelope every Stripe event has: `id`, `type`, and an object
/// in `data.object`. Anything else about it is tolerated.
pub fn parse_event(body: Bytes) -> Result<Event, String> {
    let envelope: Envelope = serde_json::from_slice(&body).map_err(|error| {
        format!("the body is not a Stripe event (id, type and data.object): {error}")
    })?;
    let _: AnyObject = envelope.data.object;
    let source = Source::new(PROCESSOR, &envelope.id, &envelope.event_type)
        .map_err(|error| format!("the event's id or type cannot be kept: {error}"))?;
    Ok(Event { source, body })
}

/// Whom the operations are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The object's metadata names the enrollment.
    Named(EnrollmentKey),
    /// The enrollment whose payment made one of these Stripe objects
    /// (PaymentIntent, Charge), as linked when that payment was accepted.
    /// When none is linked: an exception if `required` (a refund may come
    /// before its payment), else the event is not bursar's.
    Linked {
        objects: Vec<String>,
        required: bool,
    },
}

/// One operation an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub key: IdempotencyKey,
    pub command: Command,
    pub hold_gone: HoldGone,
    /// Whether the enrollment's currency must be checked before (a refund,
    /// a capture: commands that carry no currency of their own).
    pub check_currency: bool,
}

/// What an event asks of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub target: Target,
    pub currency: Currency,
    pub operations: Vec<Operation>,
    /// The Stripe objects to link to the enrollment once accepted.
    pub links: Vec<String>,
}

/// The mapping of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// Not a type bursar maps, or one that maps to nothing (an unpaid
    /// checkout, a pending refund, a failure without a hold, an object
    /// without bursar's metadata): answered 200 `ignored`.
    Ignored(String),
    Intent(Intent),
    /// A field the mapping needs cannot be read: kept as an exception
    /// (`EVENT_UNREADABLE`), since the money may have moved all the same.
    Unreadable {
        message: String,
        enrollment: Option<EnrollmentKey>,
    },
}

/// A Stripe id given as a string or as an expanded object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    fn id(self) -> String {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

#[derive(Deserialize)]
struct Session {
    amount_total: Option<i64>,
    currency: Option<String>,
    payment_status: Option<String>,
    payment_intent: Option<Expandable>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct PaymentIntent {
    id: String,
    amount_received: Option<i64>,
    currency: Option<String>,
    latest_charge: Option<Expandable>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RefundObject {
    id: String,
    amount: Option<i64>,
    currency: Option<String>,
    status: Option<String>,
    reason: Option<String>,
    charge: Option<Expandable>,
    payment_intent: Option<Expandable>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RefundList {
    #[serde(default)]
    data: Vec<RefundObject>,
}

#[derive(Deserialize)]
struct Charge {
    id: String,
    currency: Option<String>,
    payment_intent: Option<Expandable>,
    refunds: Option<RefundList>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Dispute {
    id: String,
    amount: Option<i64>,
    currency: Option<String>,
    reason: Option<String>,
    charge: Option<Expandable>,
    payment_intent: Option<Expandable>,
    metadata: Option<Map<String, Value>>,
}

/// The metadata keys the platform sets on the Checkout Session (and its
/// PaymentIntent).
pub const METADATA_USER_ID: &str = "bursar_user_id";
pub const METADATA_COURSE_ID: &str = "bursar_course_id";
pub const METADATA_HOLD_SEQ: &str = "bursar_hold_seq";

type Unreadable = (String, Option<EnrollmentKey>);

fn unreadable(message: impl Into<String>) -> Unreadable {
    (message.into(), None)
}

/// A metadata value as text; Stripe removes a key set to the empty string,
/// so an empty one counts as absent.
fn text<'a>(
    metadata: &'a Option<Map<String, Value>>,
    name: &str,
) -> Result<Option<&'a str>, Unreadable> {
    match metadata.as_ref().and_then(|metadata| metadata.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(unreadable(format!("metadata.{name} must be a string"))),
    }
}

/// The enrollment the metadata names; `None` when it names none (the object
/// is not bursar's, or names it elsewhere).
fn enrollment_of(
    metadata: &Option<Map<String, Value>>,
) -> Result<Option<EnrollmentKey>, Unreadable> {
    match (
        text(metadata, METADATA_USER_ID)?,
        text(metadata, METADATA_COURSE_ID)?,
    ) {
        (None, None) => Ok(None),
        (Some(user_id), Some(course_id)) => {
            let user_id = UserId::parse(user_id)
                .map_err(|error| unreadable(format!("metadata.{METADATA_USER_ID}: {error}")))?;
            let course_id = CourseId::parse(course_id)
                .map_err(|error| unreadable(format!("metadata.{METADATA_COURSE_ID}: {error}")))?;
            Ok(Some(EnrollmentKey { user_id, course_id }))
        }
        _ => Err(unreadable(format!(
            "the metadata names only one of {METADATA_USER_ID} and {METADATA_COURSE_ID}"
        ))),
    }
}

fn hold_of(
    metadata: &Option<Map<String, Value>>,
    key: &EnrollmentKey,
) -> Result<Option<u64>, Unreadable> {
    let Some(text) = text(metadata, METADATA_HOLD_SEQ)? else {
        return Ok(None);
    };
    text.parse::<u64>()
        .ok()
        .filter(|seq| (1..=i64::MAX as u64).contains(seq))
        .map(Some)
        .ok_or_else(|| {
            (
                format!("metadata.{METADATA_HOLD_SEQ} must be a hold's seq (a positive integer), not {text:?}"),
                Some(key.clone()),
            )
        })
}

fn currency(text: Option<&str>, key: Option<&EnrollmentKey>) -> Result<Currency, Unreadable> {
    let text = text.ok_or_else(|| (String::from("currency is missing"), key.cloned()))?;
    Currency::parse(&text.to_ascii_uppercase()).map_err(|_| {
        (
            format!("currency {text:?} is not an ISO 4217 code"),
            key.cloned(),
        )
    })
}

fn amount(value: i64, what: &str, key: Option<&EnrollmentKey>) -> Result<Amount, Unreadable> {
    Amount::new(i128::from(value)).map_err(|error| (format!("{what}: {error}"), key.cloned()))
}

fn stripe_key(
    prefix: &str,
    id: &str,
    key: Option<&EnrollmentKey>,
) -> Result<IdempotencyKey, Unreadable> {
    IdempotencyKey::parse(&format!("stripe:{prefix}:{id}")).map_err(|_| {
        (
            format!("the Stripe id {id:?} cannot name an operation"),
            key.cloned(),
        )
    })
}

fn reference(id: &str, key: Option<&EnrollmentKey>) -> Result<Reference, Unreadable> {
    Reference::parse(id).map_err(|_| {
        (
            format!("the Stripe id {id:?} cannot be kept as a reference"),
            key.cloned(),
        )
    })
}

fn object<T: for<'de> Deserialize<'de>>(event: &Event, what: &str) -> Result<T, Unreadable> {
    serde_json::from_slice::<Typed<T>>(&event.body)
        .map(|typed| typed.data.object)
        .map_err(|error| unreadable(format!("the {what} is not as Stripe sends it: {error}")))
}

/// Maps a verified event onto the operations of the contract's §7.
pub fn map(event: &Event) -> Mapping {
    let mapped = match event.source.event_type.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout(event)
        }
        "payment_intent.succeeded" => payment_intent_succeeded(event),
        "payment_intent.payment_failed" | "payment_intent.canceled" => payment_intent_ended(event),
        "refund.created" | "refund.updated" => refund_event(event),
        "charge.refunded" => charge_refunded(event),
        "charge.dispute.funds_withdrawn" => dispute(event, false),
        "charge.dispute.funds_reinstated" => dispute(event, true),
        other => Ok(Mapping::Ignored(format!(
            "bursar does not map {other} events"
        ))),
    };
    mapped.unwrap_or_else(|(message, enrollment)| Mapping::Unreadable {
        message,
        enrollment,
    })
}

/// A payment of `amount` of the PaymentIntent `pi`, or the capture of the
/// hold the metadata names (falling back on a payment if the hold is gone).
fn payment_of(
    key: Option<&EnrollmentKey>,
    hold: Option<u64>,
    amount: Amount,
    currency: Currency,
    pi: &str,
) -> Result<Operation, Unreadable> {
    let reference = reference(pi, key)?;
    let payment = Command::Payment {
        amount,
        currency: Some(currency),
        reference: Some(reference.clone()),
    };
    let (command, hold_gone, check_currency) = match hold {
        None => (payment, HoldGone::Refuse, false),
        Some(hold_seq) => (
            Command::Capture {
                hold_seq,
                amount: Some(amount),
                reference: Some(reference),
            },
            HoldGone::Instead(payment),
            true,
        ),
    };
    Ok(Operation {
        key: stripe_key("pi", pi, key)?,
        command,
        hold_gone,
        check_currency,
    })
}

fn checkout(event: &Event) -> Result<Mapping, Unreadable> {
    let session: Session = object(event, "checkout.session")?;
    if event.source.event_type == "checkout.session.completed"
        && session.payment_status.as_deref() != Some("paid")
    {
        return Ok(Mapping::Ignored(
            "the checkout is not paid (yet): an asynchronous payment reports later".into(),
        ));
    }
    let Some(key) = enrollment_of(&session.metadata)? else {
        return Ok(Mapping::Ignored(
            "the checkout names no bursar enrollment".into(),
        ));
    };
    let hold = hold_of(&session.metadata, &key)?;
    let total = session
        .amount_total
        .ok_or_else(|| (String::from("amount_total is missing"), Some(key.clone())))?;
    if total == 0 {
        return Ok(Mapping::Ignored("the checkout paid nothing".into()));
    }
    let amount = amount(total, "amount_total", Some(&key))?;
    let currency = currency(session.currency.as_deref(), Some(&key))?;
    let pi = session
        .payment_intent
        .map(Expandable::id)
        .ok_or_else(|| (String::from("payment_intent is missing"), Some(key.clone())))?;
    let operation = payment_of(Some(&key), hold, amount, currency, &pi)?;
    Ok(Mapping::Intent(Intent {
        target: Target::Named(key),
        currency,
        operations: vec![operation],
        links: vec![pi],
    }))
}

fn payment_intent_succeeded(event: &Event) -> Result<Mapping, Unreadable> {
    let intent: PaymentIntent = object(event, "payment_intent")?;
    let named = enrollment_of(&intent.metadata)?;
    let received = intent.amount_received.unwrap_or(0);
    if received == 0 {
        return Ok(Mapping::Ignored(
            "the PaymentIntent received nothing".into(),
        ));
    }
    // Without bursar's metadata (a Checkout Session's metadata is not
    // copied to its PaymentIntent unless the platform asks), the
    // PaymentIntent is bursar's if its checkout was.
    let hold = match &named {
        Some(key) => hold_of(&intent.metadata, key)?,
        None => None,
    };
    let amount = amount(received, "amount_received", named.as_ref())?;
    let currency = currency(intent.currency.as_deref(), named.as_ref())?;
    let operation = payment_of(named.as_ref(), hold, amount, currency, &intent.id)?;
    let mut links = vec![intent.id.clone()];
    links.extend(intent.latest_charge.map(Expandable::id));
    Ok(Mapping::Intent(Intent {
        target: match named {
            Some(key) => Target::Named(key),
            None => Target::Linked {
                objects: vec![intent.id],
                required: false,
            },
        },
        currency,
        operations: vec![operation],
        links,
    }))
}

fn payment_intent_ended(event: &Event) -> Result<Mapping, Unreadable> {
    let intent: PaymentIntent = object(event, "payment_intent")?;
    let Some(key) = enrollment_of(&intent.metadata)? else {
        return Ok(Mapping::Ignored(
            "the PaymentIntent names no bursar enrollment".into(),
        ));
    };
    let Some(hold_seq) = hold_of(&intent.metadata, &key)? else {
        return Ok(Mapping::Ignored(
            "the PaymentIntent names no hold to release".into(),
        ));
    };
    let currency = currency(intent.currency.as_deref(), Some(&key))?;
    let operation = Operation {
        key: stripe_key("void", &intent.id, Some(&key))?,
        command: Command::Void { hold_seq },
        // A hold captured, voided or expired already has nothing to release.
        hold_gone: HoldGone::Nothing,
        check_currency: false,
    };
    Ok(Mapping::Intent(Intent {
        target: Target::Named(key),
        currency,
        operations: vec![operation],
        links: Vec::new(),
    }))
}

/// Where a refund's or a dispute's enrollment is: its own metadata, else the
/// payment of its PaymentIntent or Charge.
fn target_of(
    metadata: &Option<Map<String, Value>>,
    payment_intent: Option<Expandable>,
    charge: Option<String>,
) -> Result<Target, Unreadable> {
    if let Some(key) = enrollment_of(metadata)? {
        return Ok(Target::Named(key));
    }
    let objects: Vec<String> = payment_intent
        .map(Expandable::id)
        .into_iter()
        .chain(charge)
        .collect();
    Ok(Target::Linked {
        objects,
        required: true,
    })
}

fn refund_operation(refund: &RefundObject) -> Result<Option<Operation>, Unreadable> {
    if refund.status.as_deref() != Some("succeeded") {
        return Ok(None);
    }
    let minor_units = refund
        .amount
        .ok_or_else(|| unreadable("a refund's amount is missing"))?;
    if minor_units == 0 {
        return Ok(None);
    }
    let detail = refund
        .reason
        .as_deref()
        .map(|why| format!("Stripe refund {} ({why})", refund.id));
    let reason = detail
        .and_then(|text| Reason::parse(&text).ok())
        .or_else(|| Reason::parse(&format!("Stripe refund {}", refund.id)).ok())
        .ok_or_else(|| unreadable(format!("the refund id {:?} cannot be kept", refund.id)))?;
    Ok(Some(Operation {
        key: stripe_key("re", &refund.id, None)?,
        command: Command::Refund {
            amount: amount(minor_units, "a refund's amount", None)?,
            reason,
            reference: Some(reference(&refund.id, None)?),
        },
        hold_gone: HoldGone::Refuse,
        check_currency: true,
    }))
}

fn refund_event(event: &Event) -> Result<Mapping, Unreadable> {
    let refund: RefundObject = object(event, "refund")?;
    let Some(operation) = refund_operation(&refund)? else {
        return Ok(Mapping::Ignored(
            "the refund has not succeeded (yet)".into(),
        ));
    };
    let currency = currency(refund.currency.as_deref(), None)?;
    let target = target_of(
        &refund.metadata,
        refund.payment_intent,
        refund.charge.map(Expandable::id),
    )?;
    Ok(Mapping::Intent(Intent {
        target,
        currency,
        operations: vec![operation],
        links: Vec::new(),
    }))
}

/// `charge.refunded` carries the charge, whose `amount_refunded` is a
/// running total of every refund so far: never used. Each succeeded refund
/// it lists is one refund, keyed by its own id, so a refund listed again by
/// the next `charge.refunded` (or reported by `refund.created`) is a replay.
/// Newer API versions list none: those come through `refund.*` events.
fn charge_refunded(event: &Event) -> Result<Mapping, Unreadable> {
    let charge: Charge = object(event, "charge")?;
    let mut operations = Vec::new();
    for refund in charge.refunds.map(|list| list.data).unwrap_or_default() {
        operations.extend(refund_operation(&refund)?);
    }
    if operations.is_empty() {
        return Ok(Mapping::Ignored(
            "the charge lists no succeeded refund (refund.* events report them)".into(),
        ));
    }
    let currency = currency(charge.currency.as_deref(), None)?;
    let target = target_of(&charge.metadata, charge.payment_intent, Some(charge.id))?;
    Ok(Mapping::Intent(Intent {
        target,
        currency,
        operations,
        links: Vec::new(),
    }))
}

fn dispute(event: &Event, reinstated: bool) -> Result<Mapping, Unreadable> {
    let dispute: Dispute = object(event, "dispute")?;
    let minor_units = dispute
        .amount
        .ok_or_else(|| unreadable("the dispute's amount is missing"))?;
    if minor_units == 0 {
        return Ok(Mapping::Ignored("the dispute moved nothing".into()));
    }
    let amount = amount(minor_units, "the dispute's amount", None)?;
    let currency = currency(dispute.currency.as_deref(), None)?;
    let reference = reference(&dispute.id, None)?;
    let operation = if reinstated {
        Operation {
            key: stripe_key("dpr", &dispute.id, None)?,
            command: Command::Payment {
                amount,
                currency: Some(currency),
                reference: Some(reference),
            },
            hold_gone: HoldGone::Refuse,
            check_currency: false,
        }
    } else {
        let why = dispute.reason.as_deref().unwrap_or("no reason given");
        let reason = Reason::parse(&format!(
            "Stripe dispute {}: funds withdrawn ({why})",
            dispute.id
        ))
        .or_else(|_| Reason::parse(&format!("Stripe dispute {}: funds withdrawn", dispute.id)))
        .map_err(|_| unreadable(format!("the dispute id {:?} cannot be kept", dispute.id)))?;
        Operation {
            key: stripe_key("dp", &dispute.id, None)?,
            command: Command::Refund {
                amount,
                reason,
                reference: Some(reference),
            },
            hold_gone: HoldGone::Refuse,
            check_currency: true,
        }
    };
    let target = target_of(
        &dispute.metadata,
        dispute.payment_intent,
        dispute.charge.map(Expandable::id),
    )?;
    Ok(Mapping::Intent(Intent {
        target,
        currency,
        operations: vec![operation],
        links: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn a_signature_made_as_stripe_makes_it_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = SignatureHeader::parse(&sign(SECRET, 1_700_000_000, body)).unwrap();
        let secrets = StripeSecrets::new(&["whsec_old".into(), SECRET.into()]).unwrap();
        assert_eq!(secrets.verify(&header, body), Ok(()));
        assert_eq!(
            secrets.verify(&header, br#"{"id":"evt_2"}"#),
            Err(SignatureError::Mismatch)
        );
        let other = StripeSecrets::new(&["whsec_old".into()]).unwrap();
        assert_eq!(other.verify(&header, body), Err(SignatureError::Mismatch));
        // Several v1 signatures (Stripe signs with each secret while one
        // rolls), a v0 and unknown schemes: any v1 may match.
        let signed = sign(SECRET, 1_700_000_000, body);
        let good = signed.split_once(",v1=").unwrap().1;
        let header = format!("t=1700000000,v0=abc,v1={},v1={good},x=1", "0".repeat(64));
        let header = SignatureHeader::parse(&header).unwrap();
        assert_eq!(header.signatures.len(), 2);
        assert_eq!(secrets.verify(&header, body), Ok(()));
        // Hex of either case is read.
        let upper = format!("t=1700000000,v1={}", good.to_ascii_uppercase());
        assert_eq!(
            secrets.verify(&SignatureHeader::parse(&upper).unwrap(), body),
            Ok(())
        );
        assert!(StripeSecrets::new(&[" ".into(), String::new()]).is_none());
    }

    #[test]
    fn headers_without_a_timestamp_or_a_v1_are_malformed() {
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "garbage", "t=1;v1=00"] {
            assert_eq!(
                SignatureHeader::parse(bad),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        let header = SignatureHeader::parse("t=1000,v1=zz").unwrap();
        assert!(
            header.signatures.is_empty(),
            "a v1 that is not hex matches nothing"
        );
        assert_eq!(header.check_age(1300), Ok(()));
        assert_eq!(header.check_age(700), Ok(()));
        assert_eq!(
            header.check_age(1301),
            Err(SignatureError::Stale { age: 301 })
        );
        assert_eq!(
            header.check_age(699),
            Err(SignatureError::Stale { age: -301 })
        );
        let far = SignatureHeader::parse(&format!("t={},v1=00", i64::MIN)).unwrap();
        assert!(far.check_age(i64::MAX).is_err());
    }

    fn event(event_type: &str, object: Value) -> Event {
        let body =
            serde_json::json!({"id": "evt_1", "type": event_type, "data": {"object": object}});
        parse_event(Bytes::from(serde_json::to_vec(&body).unwrap())).unwrap()
    }

    #[test]
    fn the_envelope_needs_an_id_a_type_and_an_object() {
        for bad in [
            r#"{"type":"x","data":{"object":{}}}"#,
            r#"{"id":"evt_1","data":{"object":{}}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":"text"}}"#,
            r#"{"id":"evt 1","type":"x","data":{"object":{}}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":{}}"#,
        ] {
            assert!(parse_event(Bytes::from(bad)).is_err(), "{bad}");
        }
        let ok = r#"{"id":"evt_1","type":"x","data":{"object":{"a":[1,{"b":null}]},"extra":1},"more":true}"#;
        assert_eq!(parse_event(Bytes::from(ok)).unwrap().source.event_type, "x");
    }

    fn key() -> EnrollmentKey {
        EnrollmentKey {
            user_id: UserId::parse("u1").unwrap(),
            course_id: CourseId::parse("c1").unwrap(),
        }
    }

    fn intent(mapping: Mapping) -> Intent {
        match mapping {
            Mapping::Intent(intent) => intent,
            other => panic!("expected an intent, got {other:?}"),
        }
    }

    #[test]
    fn a_paid_checkout_is_a_payment_or_the_capture_of_its_hold() {
        let session = |hold: Option<&str>, status: &str| {
            let mut metadata =
                serde_json::json!({"bursar_user_id": "u1", "bursar_course_id": "c1"});
            if let Some(hold) = hold {
                metadata["bursar_hold_seq"] = hold.into();
            }
            serde_json::json!({"id": "cs_1", "amount_total": 5000, "currency": "usd",
                "payment_status": status, "payment_intent": "pi_1", "metadata": metadata,
                "anything": {"else": [1, 2]}})
        };
        let paid = intent(map(&event(
            "checkout.session.completed",
            session(None, "paid"),
        )));
        assert_eq!(paid.target, Target::Named(key()));
        assert_eq!(paid.links, vec!["pi_1".to_owned()]);
        assert_eq!(paid.operations[0].key.as_str(), "stripe:pi:pi_1");
        assert!(matches!(
            paid.operations[0].command,
            Command::Payment { .. }
        ));
        let held = intent(map(&event(
            "checkout.session.completed",
            session(Some("2"), "paid"),
        )));
        assert!(matches!(
            held.operations[0].command,
            Command::Capture { hold_seq: 2, .. }
        ));
        assert!(matches!(
            held.operations[0].hold_gone,
            HoldGone::Instead(Command::Payment { .. })
        ));
        assert!(matches!(
            map(&event(
                "checkout.session.completed",
                session(None, "unpaid")
            )),
            Mapping::Ignored(_)
        ));
        assert!(matches!(
            map(&event(
                "checkout.session.async_payment_succeeded",
                session(None, "unpaid")
            )),
            Mapping::Intent(_)
        ));
        assert!(matches!(
            map(&event(
                "checkout.session.completed",
                session(Some("two"), "paid")
            )),
            Mapping::Unreadable {
                enrollment: Some(_),
                ..
            }
        ));
        let mut nameless = session(None, "paid");
        nameless["metadata"] = serde_json::json!({});
        assert!(matches!(
            map(&event("checkout.session.completed", nameless)),
            Mapping::Ignored(_)
        ));
        let mut half = session(None, "paid");
        half["metadata"] = serde_json::json!({"bursar_user_id": "u1"});
        assert!(matches!(
            map(&event("checkout.session.completed", half)),
            Mapping::Unreadable { .. }
        ));
        let mut odd = session(None, "paid");
        odd["amount_total"] = "5000".into();
        assert!(matches!(
            map(&event("checkout.session.completed", odd)),
            Mapping::Unreadable { .. }
        ));
    }

    #[test]
    fn a_charge_refunded_lists_each_refund_once_and_never_the_running_total() {
        let charge = serde_json::json!({"id": "ch_1", "currency": "usd", "payment_intent": "pi_1",
            "amount_refunded": 3000, "metadata": {},
            "refunds": {"data": [
                {"id": "re_2", "amount": 2000, "currency": "usd", "status": "succeeded"},
                {"id": "re_1", "amount": 1000, "currency": "usd", "status": "succeeded"},
                {"id": "re_3", "amount": 500, "currency": "usd", "status": "pending"}]}});
        let refunded = intent(map(&event("charge.refunded", charge)));
        let keys: Vec<&str> = refunded
            .operations
            .iter()
            .map(|op| op.key.as_str())
            .collect();
        assert_eq!(keys, ["stripe:re:re_2", "stripe:re:re_1"]);
        assert_eq!(
            refunded.target,
            Target::Linked {
                objects: vec!["pi_1".into(), "ch_1".into()],
                required: true
            }
        );
    }

    #[test]
    fn unknown_types_and_failures_without_a_hold_are_ignored() {
        assert!(matches!(
            map(&event("plan.created", serde_json::json!({}))),
            Mapping::Ignored(_)
        ));
        let failed = serde_json::json!({"id": "pi_1", "currency": "usd",
            "metadata": {"bursar_user_id": "u1", "bursar_course_id": "c1"}});
        assert!(matches!(
            map(&event("payment_intent.payment_failed", failed)),
            Mapping::Ignored(_)
        ));
    }
}
