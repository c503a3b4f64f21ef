//! Developer tasks for tenantflow, also used as a library by the privileged tests (the lab).
//! No product logic lives here.

pub mod exec;
pub mod image;
pub mod lab;
pub mod rule_group;
pub mod setup;
pub mod tools;
pub mod traffic;
