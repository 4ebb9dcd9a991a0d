//! meshroom-svc: a photogrammetry job service that turns photo sets into 3D models with Meshroom.
//!
//! Roles: `serve` (HTTP API), `work` (runs jobs on a GPU node) and `all-in-one` (both, with an
//! in-process queue and local storage). See README.md.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod egress;
pub mod engine;
pub mod error;
pub mod events;
pub mod http;
pub mod images;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod pipelines;
pub mod process;
pub mod queue;
pub mod roles;
pub mod scheduling;
pub mod storage;
pub mod tenants;
pub mod trace;
pub mod webhook;
pub mod worker;
