//! Response deadlines.
