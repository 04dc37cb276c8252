//! The HTTP-level tests of bursar: real HTTP on a real port against a fresh
//! database per test. Each test body runs on every backend through the
//! `conformance!` macro of `helpers`.

mod helpers;

mod auth;
mod bad_input;
mod batch;
mod browser;
mod checkout_readme;
mod cli;
mod crash;
mod digest;
mod disk_faults;
mod events;
mod finance;
mod holds;
mod hostile;
mod intake;
mod load_test;
mod many_servers;
mod nats;
mod openapi;
mod operations;
mod pg_fault;
mod readme;
mod scenarios;
mod stripe_events;
mod tokens;
mod typescript;
mod webhooks;
