//! The operator commands beside `run`: `check-config` (validate everything the gateway would
//! load, report every problem) and `quickstart` (a demo on embedded defaults). `audit-pack` is
//! the `export` module, shared with the admin plane.

pub mod check;
pub mod quickstart;
