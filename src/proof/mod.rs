//! Proof of erasure: Merkle trees, signed notes and checkpoints, the transparency log,
//! receipts and their verification.

pub mod keys;
pub mod log;
pub mod merkle;
pub mod note;
pub mod receipt;
