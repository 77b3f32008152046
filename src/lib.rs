//! Kintsugi: image restoration for scanned photographs.
//!
//! The library holds everything the studio and the CLI share: imaging I/O ([`imaging`]),
//! restorers ([`restore`]), the model registry ([`models`]) and the background worker
//! ([`engine`]). See `DESIGN.md` in the shared design folder for the architecture.

pub mod cli;
pub mod detect;
pub mod engine;
pub mod imaging;
pub mod jsonfile;
pub mod models;
pub mod restore;
pub mod rl;
#[cfg(feature = "studio")]
pub mod studio;
pub mod train;
