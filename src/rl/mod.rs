//! Reinforcement-learning restoration (PixelRL): every pixel is an agent that picks a filter
//! or a small move per step, trained with advantage actor-critic to decrease its squared
//! error.
//!
//! - [`env`]: the actions, the per-pixel reward and the episode state;
//! - [`net`]: the fully convolutional actor-critic (policy and value heads);
//! - [`a2c`]: sampling, discounted returns and the actor-critic loss;
//! - [`episode`]: recorded episodes (every step's image, action map, reward) and replay;
//! - [`agent`]: a trained agent with its manifest, running greedy episodes on full images;
//! - [`eval`]: held-out evaluation against fixed filters and classical baselines;
//! - [`stats`]: action statistics per zone (hole seam / interior, flat / textured);
//! - [`refine`]: the `rl-refine` restorer.

pub mod a2c;
pub mod agent;
pub mod env;
pub mod episode;
pub mod eval;
pub mod net;
pub mod refine;
pub mod stats;

pub use env::{Action, Episode, Frame};
pub use net::{NetConfig, RlError, RlResult};
