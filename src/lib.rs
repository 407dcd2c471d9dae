//! quietus: carries out data-subject requests and employee exits, backup-first, and
//! proves what it erased.
//!
//! The modules read like the flow, and imports point one way, from the doors down to the
//! foundations: `cli` / `web` / `demo` → `intake` → `lifecycle` → `plan` → `targets` →
//! `policy` → `store`, with `config`, `clock` and `error` underneath everything.

// Standard output goes through cli::output::emit (crate::outln!), which survives a
// closed pipe; println! would panic on one.
#![deny(clippy::print_stdout)]

pub mod app;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod failpoints;
pub mod fsx;
pub mod intake;
pub mod jobs;
pub mod lifecycle;
pub mod mail;
pub mod plan;
pub mod policy;
pub mod proof;
pub mod store;
pub mod targets;
pub mod text;
pub mod web;

pub use error::{Code, Error, Result};

/// The tool name and version that receipts and `--version` carry.
pub const TOOL: &str = concat!("quietus ", env!("CARGO_PKG_VERSION"));
