//! The event system: domain events the backend publishes once, and rtgate's listeners
//! that decide what follows from each (`routing`: which rooms get it). Listeners are
//! sans-IO: an event and the state they keep in, actions out; executors perform them.

pub mod catalogue;
pub mod routing;
