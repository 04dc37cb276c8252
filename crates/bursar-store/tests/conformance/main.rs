//! The storage conformance suite: every test body runs once per backend
//! through the `conformance!` macro of `helpers`, so a new backend passes the
//! same tests as the ones before it.

mod helpers;

mod events;
mod holds;
mod intake;
mod layout;
mod model;
mod publishers;
mod store;
mod tokens;
