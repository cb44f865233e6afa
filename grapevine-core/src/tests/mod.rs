//! Deterministic simulation of one publisher and several subscribers over a
//! lossy, reordering, duplicating network.

mod replication;
mod review;
mod rig;
mod scenarios;
mod sim;
