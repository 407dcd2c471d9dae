//! Proof of erasure: Merkle trees, the transparency log, receipts and their verification.

pub mod merkle;
