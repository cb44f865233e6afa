//! Deterministic simulation of one publisher and several subscribers over a
//! lossy, reordering, duplicating network, in both directions, and
//! hand-driven tests of single rules.

mod auth;
mod config;
mod counts;
mod cycle;
mod forged;
mod publisher;
mod regressions;
mod relay;
mod repair;
mod replication;
mod review;
mod rig;
mod scenarios;
mod schema;
mod sim;
mod subscriber;
