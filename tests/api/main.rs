//! The one integration-test binary: the real app over HTTP, with the fake engine; real RabbitMQ
//! and Garage for the distributed tests (`scripts/test` starts them).

mod browser;
mod cli;
mod cluster;
mod colmap;
mod console;
mod console_browser;
mod dashboards;
mod database;
mod deploy;
mod distributed;
mod events;
mod faults;
mod hardening;
mod helpers;
mod lifecycle;
mod logs;
mod meshroom;
#[path = "../fixtures/photos.rs"]
mod photos;
mod postgres;
mod procs;
mod rate_limits;
mod restart;
mod s3;
mod ssrf;
mod tenants;
mod tokens;
mod traces;
mod validation;
mod webhooks;
