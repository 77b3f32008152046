//! Models: the registry of every restorer the app knows, classical and learned.

pub mod registry;
