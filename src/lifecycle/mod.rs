//! Request states, transitions with who and why, and deadlines.

pub mod calendar;
pub mod deadline;
