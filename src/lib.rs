//! tensor-iroh moves `.npy` and `.safetensors` files between machines over iroh.
//!
//! The binary's subcommands live in [`commands`]; they wire together the file
//! [`formats`], their lossless [`codec`], the network [`protocol`], the
//! listener's [`service`], its output [`store`] (whose errors name files
//! relative to it, since peers are told them) and served [`catalog`] (with the
//! [`hash_lists`] of its files), a pull's
//! [`patterns`], and the terminal [`ui`], which prints a peer's text only
//! through [`escape`].

pub mod catalog;
pub mod codec;
pub mod commands;
pub mod escape;
pub mod file_version;
pub mod formats;
pub mod hash_lists;
pub mod patterns;
pub mod protocol;
pub mod service;
pub mod store;
pub mod ui;
