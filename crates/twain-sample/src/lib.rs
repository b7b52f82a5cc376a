//! Logits processors and seeded samplers for twain: turn the logits a
//! [`Model`](twain_model::Model) writes for the last position into the next
//! token.
//!
//! A [`Sampler`] is a chain of processors ending in a draw: greedy (argmax),
//! temperature, top-k, top-p, min-p, repetition / presence / frequency
//! penalties, logit bias, an allowed-token [`TokenMask`] for guided
//! generation, and any custom [`LogitsProcessor`] (closures included). The
//! random generator is seeded: the same seed, configuration and logits give
//! the same tokens on every platform.
//!
//! ```
//! use twain_sample::{Context, Sampler, TokenMask};
//!
//! // Greedy decoding is an argmax.
//! let mut greedy = Sampler::greedy();
//! assert_eq!(greedy.sample(&mut vec![0.1, 2.5, -1.0, 0.7], &[])?, 1);
//!
//! // A typical chat configuration, with a custom processor that bans token 3.
//! let mut sampler = Sampler::builder()
//!     .temperature(0.7)
//!     .top_k(40)
//!     .top_p(0.9)
//!     .min_p(0.05)
//!     .repetition_penalty(1.1)
//!     .with_processor(|logits: &mut [f32], _: &Context| logits[3] = f32::NEG_INFINITY)
//!     .seed(42)
//!     .build()?;
//! let history = [1, 1, 2];
//! let logits = vec![1.0, 2.0, 1.5, 4.0, 0.5];
//! let token = sampler.sample(&mut logits.clone(), &history)?;
//! assert_ne!(token, 3);
//!
//! // The same seed replays the same tokens.
//! let mut again = Sampler::builder().temperature(0.7).top_k(40).top_p(0.9).min_p(0.05)
//!     .repetition_penalty(1.1)
//!     .with_processor(|logits: &mut [f32], _: &Context| logits[3] = f32::NEG_INFINITY)
//!     .seed(42)
//!     .build()?;
//! assert_eq!(again.sample(&mut logits.clone(), &history)?, token);
//!
//! // Guided generation: a mask per step; only tokens 0 and 4 are allowed now.
//! sampler.set_mask(Some(TokenMask::from_allowed(5, [0, 4])?));
//! let token = sampler.sample(&mut logits.clone(), &history)?;
//! assert!(token == 0 || token == 4);
//!
//! // Bad parameters are errors, not panics.
//! assert!(Sampler::builder().top_p(1.5).build().is_err());
//! # Ok::<(), twain_sample::SampleError>(())
//! ```
//!
//! # Order of application
//!
//! [`Sampler::sample`] applies, in this order:
//!
//! 1. **penalties** over the history (or its last `n` tokens): repetition
//!    (divide a positive logit by `r`, multiply a negative one by `r`), then
//!    presence (`- p` once) and frequency (`- f * count`);
//! 2. **logit bias**;
//! 3. **custom processors**, in the order they were added;
//! 4. **token mask**: disallowed tokens get `-inf`. Nothing after this step
//!    can bring a token back, so the mask holds whatever else is in the chain;
//! 5. **temperature**: 0 means greedy, the argmax of the masked logits
//!    (steps 6 to 8 are skipped; they never remove the argmax anyway);
//! 6. **top-k**;
//! 7. **top-p** over the probabilities left by top-k;
//! 8. **min-p**, relative to the most likely token;
//! 9. a **draw** from the softmax of the survivors, with the seeded generator.
//!
//! Top-k, top-p and min-p never remove the most likely token. If custom
//! processors remove every allowed token (say a [`TopK`] placed before the
//! mask kept only disallowed ones), the sampler falls back to the allowed token
//! with the largest logit after step 2. NaN logits count as `-inf`; a `+inf`
//! logit (after the mask) is chosen outright.
//!
//! Details: the logits passed in are scratch (steps 1 to 4 rewrite them in
//! place). Ties go to the lower token id (greedy, top-k, top-p). Top-p keeps
//! the smallest most-likely-first set whose probability reaches `p`, the
//! token that crosses the line included. Tokens more than 87 nats below the
//! best (after temperature) have probability 0 in `f32` and are never drawn.
//!
//! # Reproducibility
//!
//! The same seed, configuration, history and logits give the same token on
//! every platform and optimisation level: the generator (xoshiro256++ seeded
//! by SplitMix64) and the `exp` behind the probabilities are written here
//! with plain IEEE arithmetic, sums run in a fixed order, top-p's masses are
//! exact fixed-point integers, and the set and order of the tokens the draw
//! walks never depend on how a sort or selection routine permutes its input.
//! Each call to [`Sampler::sample`] draws exactly one random number, forced
//! choices included, so step `i` always uses the `i`-th number of the stream.
//! Without [`SamplerBuilder::seed`] the seed is random; [`Sampler::seed`]
//! tells it, to replay a run.
//!
//! # Speed
//!
//! Built for vocabularies of tens of thousands of tokens at hundreds of steps
//! per second; nothing sorts the vocabulary. Greedy is one vectorised argmax
//! pass. Top-k with `k <= 1024` scans the logits once with a small heap,
//! skipping 16-wide chunks that cannot enter it, and computes only `k`
//! probabilities. Top-p over the whole vocabulary looks for the nucleus among
//! the 64 most likely tokens first and, when it is larger, finds its boundary
//! with mass histograms over the probabilities' bit patterns (linear time).
//! Probabilities use a branch-free `exp` that vectorises. A step allocates
//! nothing once the scratch buffers have grown. Rough timings per step on a
//! 49 152-token vocabulary are printed by
//! `cargo test -p twain-sample --release --test speed -- --ignored --nocapture`.
//!
//! # Stand-alone processors
//!
//! [`Temperature`], [`TopK`], [`TopP`], [`MinP`], [`Penalties`] and
//! [`LogitBias`] are also [`LogitsProcessor`]s over a whole logits slice, to
//! build a chain in a different order with
//! [`SamplerBuilder::with_processor`] or to use outside a sampler.
//! [`softmax`], [`softmax_in_place`] and [`argmax`] are the probability
//! helpers the sampler uses.
#![deny(missing_docs)]

mod error;
mod mask;
mod prob;
mod processor;
mod rng;
mod sampler;
mod select;

pub use error::SampleError;
pub use mask::TokenMask;
pub use prob::{argmax, softmax, softmax_in_place};
pub use processor::{
    Context, Dry, LogitBias, LogitsProcessor, MinP, Penalties, Temperature, TopK, TopP,
};
pub use sampler::{Sampler, SamplerBuilder, TokenProb};
pub use twain_model::TokenId;
