//! The one integration-test binary: the real app over HTTP, with the fake engine.

mod helpers;
mod lifecycle;
mod restart;
mod validation;
mod webhooks;
