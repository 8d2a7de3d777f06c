//! Keywarden's core: everything that decides whether a request is allowed, with no I/O,
//! no async runtime and no database. The store, the server and the tower layer build on it.

pub mod clock;
pub mod codes;
pub mod decision;
pub mod hashing;
pub mod ip;
pub mod leaks;
pub mod limits;
pub mod model;
pub mod routes;
pub mod scopes;
pub mod secret;
pub mod template;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use secret::{ct_eq, Secret};
