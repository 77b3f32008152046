//! Models: the registry of every restorer the app knows, classical and learned.

pub mod conv;
pub mod layers;
pub mod registry;
