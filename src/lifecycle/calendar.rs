//! Working-day calendars.
