//! Policy files: retention rules and data maps; loading and validation.

pub mod period;

pub use period::{Jurisdiction, Period, Unit};
