//! The [`LogitsProcessor`] trait, its processing [`Context`], and the built-in
//! processors as stand-alone values.
//!
//! The stand-alone processors ([`Temperature`], [`TopK`], [`TopP`], [`MinP`],
//! [`Penalties`], [`Dry`], [`LogitBias`]) work on a whole logits slice and drop tokens
//! by setting their logits to `-inf`, so they can be put in any order, in a
//! [`Sampler`](crate::Sampler) through
//! [`SamplerBuilder::with_processor`](crate::SamplerBuilder::with_processor) or
//! in your own loop. The sampler's own stages compute the same things on a
//! short candidate list instead of the whole vocabulary.

use crate::prob::{best, exp_nonpos};
use crate::select::{nucleus, top_k, top_k_scan, Cand, HEAP_TOP_K};
use crate::{SampleError, TokenMask};
use twain_model::TokenId;

/// What a processor may look at besides the logits.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Context<'a> {
    /// The tokens in context so far (prompt and generated), oldest first.
    pub history: &'a [TokenId],
    /// The allowed-token mask of this step, if any. The sampler applies it
    /// after every processor has run, so a processor cannot undo it.
    pub mask: Option<&'a TokenMask>,
}

impl<'a> Context<'a> {
    /// A context with `history` and no mask.
    pub fn new(history: &'a [TokenId]) -> Self {
        Self {
            history,
            mask: None,
        }
    }

    /// The same context with `mask`.
    pub fn with_mask(self, mask: Option<&'a TokenMask>) -> Self {
        Self { mask, ..self }
    }
}

/// One step of the chain: rewrites the logits in place.
///
/// A processor drops a token by setting its logit to `-inf`. Closures
/// `FnMut(&mut [f32], &Context)` are processors:
///
/// ```
/// use twain_sample::{Context, LogitsProcessor};
///
/// // Never end the sequence (token 0 is EOS here).
/// let mut no_eos = |logits: &mut [f32], _: &Context| logits[0] = f32::NEG_INFINITY;
/// let mut logits = vec![3.0, 1.0, 2.0];
/// no_eos.process(&mut logits, &Context::new(&[]));
/// assert_eq!(logits[0], f32::NEG_INFINITY);
/// ```
pub trait LogitsProcessor: Send {
    /// Rewrite `logits` (one per vocabulary entry) for this step.
    fn process(&mut self, logits: &mut [f32], ctx: &Context<'_>);
}

impl<F> LogitsProcessor for F
where
    F: FnMut(&mut [f32], &Context<'_>) + Send,
{
    fn process(&mut self, logits: &mut [f32], ctx: &Context<'_>) {
        self(logits, ctx)
    }
}

fn invalid(name: &'static str, value: f64, expected: &'static str) -> SampleError {
    SampleError::InvalidParameter {
        name,
        value,
        expected,
    }
}

pub(crate) fn check_temperature(t: f32) -> Result<f32, SampleError> {
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(invalid("temperature", t.into(), "a finite number >= 0"))
    }
}

pub(crate) fn check_top_k(k: usize) -> Result<usize, SampleError> {
    if k >= 1 {
        Ok(k)
    } else {
        Err(invalid("top_k", k as f64, "at least 1"))
    }
}

pub(crate) fn check_top_p(p: f32) -> Result<f32, SampleError> {
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(invalid("top_p", p.into(), "a number in (0, 1]"))
    }
}

pub(crate) fn check_min_p(p: f32) -> Result<f32, SampleError> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid("min_p", p.into(), "a number in [0, 1]"))
    }
}

pub(crate) fn check_bias(b: f32) -> Result<f32, SampleError> {
    if b.is_nan() || b == f32::INFINITY {
        Err(invalid(
            "logit_bias",
            b.into(),
            "a finite number, or -inf to ban the token",
        ))
    } else {
        Ok(b)
    }
}

/// Keep only the `kept` tokens: every other logit becomes `-inf`.
fn keep_only(logits: &mut [f32], kept: &mut [Cand]) {
    for c in kept.iter_mut() {
        c.v = logits[c.id as usize];
    }
    logits.fill(f32::NEG_INFINITY);
    for c in kept.iter() {
        logits[c.id as usize] = c.v;
    }
}

/// Divide the logits by a temperature; temperature 0 keeps only the argmax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(f32);

impl Temperature {
    /// Errors unless `t` is finite and `>= 0`.
    pub fn new(t: f32) -> Result<Self, SampleError> {
        check_temperature(t).map(Self)
    }
}

impl LogitsProcessor for Temperature {
    fn process(&mut self, logits: &mut [f32], _: &Context<'_>) {
        if self.0 == 0.0 {
            if let Some((i, x)) = best(logits) {
                logits.fill(f32::NEG_INFINITY);
                logits[i] = x;
            }
        } else if self.0 != 1.0 {
            for x in logits.iter_mut() {
                *x /= self.0;
            }
        }
    }
}

/// Keep the `k` tokens with the largest logits (ties broken by lower id).
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    k: usize,
    scratch: Vec<Cand>,
    work: Vec<Cand>,
}

impl TopK {
    /// Errors when `k == 0`.
    pub fn new(k: usize) -> Result<Self, SampleError> {
        Ok(Self {
            k: check_top_k(k)?,
            scratch: Vec::new(),
            work: Vec::new(),
        })
    }
}

impl LogitsProcessor for TopK {
    fn process(&mut self, logits: &mut [f32], _: &Context<'_>) {
        if self.k >= logits.len() {
            return;
        }
        if self.k <= HEAP_TOP_K {
            top_k_scan(logits, self.k, &mut self.scratch);
        } else {
            self.scratch.clear();
            self.scratch.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, &x)| x > f32::NEG_INFINITY)
                    .map(|(i, &x)| Cand { id: i as u32, v: x }),
            );
            top_k(&mut self.scratch, self.k, &mut self.work);
        }
        keep_only(logits, &mut self.scratch);
    }
}

/// Nucleus sampling: keep the smallest set of most likely tokens whose
/// probability (softmax of the logits as they are) reaches `p`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopP {
    p: f32,
    scratch: Vec<Cand>,
    work: Vec<Cand>,
}

impl TopP {
    /// Errors unless `0 < p <= 1`.
    pub fn new(p: f32) -> Result<Self, SampleError> {
        Ok(Self {
            p: check_top_p(p)?,
            scratch: Vec::new(),
            work: Vec::new(),
        })
    }
}

impl LogitsProcessor for TopP {
    fn process(&mut self, logits: &mut [f32], _: &Context<'_>) {
        let Some((_, m)) = best(logits) else { return };
        if self.p >= 1.0 {
            return;
        }
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &x)| x > f32::NEG_INFINITY)
                .map(|(i, &x)| Cand {
                    id: i as u32,
                    v: if m == f32::INFINITY {
                        f32::from(u8::from(x == m))
                    } else {
                        exp_nonpos(x - m)
                    },
                }),
        );
        nucleus(&mut self.scratch, self.p, false, &mut self.work);
        keep_only(logits, &mut self.scratch);
    }
}

/// Keep the tokens whose probability is at least `p` times that of the most
/// likely token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinP(f32);

impl MinP {
    /// Errors unless `0 <= p <= 1`.
    pub fn new(p: f32) -> Result<Self, SampleError> {
        check_min_p(p).map(Self)
    }
}

impl LogitsProcessor for MinP {
    fn process(&mut self, logits: &mut [f32], _: &Context<'_>) {
        let Some((_, m)) = best(logits) else { return };
        if self.0 == 0.0 {
            return;
        }
        for x in logits.iter_mut() {
            let keep = if m == f32::INFINITY {
                *x == m
            } else {
                exp_nonpos(*x - m) >= self.0
            };
            if !keep {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// Repetition, presence and frequency penalties.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PenaltyParams {
    pub repetition: f32,
    pub presence: f32,
    pub frequency: f32,
    pub last_n: Option<usize>,
}

impl Default for PenaltyParams {
    fn default() -> Self {
        Self {
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.0,
            last_n: None,
        }
    }
}

impl PenaltyParams {
    pub(crate) fn validate(self) -> Result<Self, SampleError> {
        if !(self.repetition.is_finite() && self.repetition > 0.0) {
            return Err(invalid(
                "repetition_penalty",
                self.repetition.into(),
                "a finite number > 0 (1 = off)",
            ));
        }
        if !self.presence.is_finite() {
            return Err(invalid(
                "presence_penalty",
                self.presence.into(),
                "a finite number (0 = off)",
            ));
        }
        if !self.frequency.is_finite() {
            return Err(invalid(
                "frequency_penalty",
                self.frequency.into(),
                "a finite number (0 = off)",
            ));
        }
        Ok(self)
    }

    pub(crate) fn is_off(&self) -> bool {
        self.repetition == 1.0 && self.presence == 0.0 && self.frequency == 0.0
    }

    pub(crate) fn window<'h>(&self, history: &'h [TokenId]) -> &'h [TokenId] {
        match self.last_n {
            Some(n) => &history[history.len().saturating_sub(n)..],
            None => history,
        }
    }

    /// Penalise every token of `window` that is in range; `counts` must be
    /// all zero on entry and is all zero again on return.
    pub(crate) fn apply(
        &self,
        logits: &mut [f32],
        window: &[TokenId],
        counts: &mut Vec<u32>,
        touched: &mut Vec<TokenId>,
    ) {
        if counts.len() < logits.len() {
            counts.resize(logits.len(), 0);
        }
        touched.clear();
        for &t in window {
            if (t as usize) < logits.len() {
                let c = &mut counts[t as usize];
                if *c == 0 {
                    touched.push(t);
                }
                *c = c.saturating_add(1);
            }
        }
        for &t in touched.iter() {
            let t = t as usize;
            let n = counts[t];
            counts[t] = 0;
            let mut x = logits[t];
            if self.repetition != 1.0 {
                x = if x > 0.0 {
                    x / self.repetition
                } else {
                    x * self.repetition
                };
            }
            logits[t] = x - (self.presence + self.frequency * n as f32);
        }
        touched.clear();
    }
}

/// Penalties on tokens already in the history (or its last `n` tokens).
///
/// For a token seen `c` times: the repetition penalty `r` divides a positive
/// logit by `r` and multiplies a negative one by `r` (so `r > 1` always lowers
/// it); then `presence + frequency * c` is subtracted. Tokens of the history
/// that are out of range for the logits are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Penalties {
    params: PenaltyParams,
    counts: Vec<u32>,
    touched: Vec<TokenId>,
}

impl Penalties {
    /// Errors unless `repetition` is finite and `> 0` and the other two are finite.
    /// `(1.0, 0.0, 0.0)` changes nothing.
    pub fn new(repetition: f32, presence: f32, frequency: f32) -> Result<Self, SampleError> {
        let params = PenaltyParams {
            repetition,
            presence,
            frequency,
            last_n: None,
        }
        .validate()?;
        Ok(Self {
            params,
            counts: Vec::new(),
            touched: Vec::new(),
        })
    }

    /// Look at the last `n` tokens of the history only.
    pub fn last_n(mut self, n: usize) -> Self {
        self.params.last_n = Some(n);
        self
    }
}

impl LogitsProcessor for Penalties {
    fn process(&mut self, logits: &mut [f32], ctx: &Context<'_>) {
        if self.params.is_off() {
            return;
        }
        let window = self.params.window(ctx.history);
        self.params
            .apply(logits, window, &mut self.counts, &mut self.touched);
    }
}

/// DRY ("don't repeat yourself"), the repeated-sequence penalty of
/// koboldcpp and text-generation-webui: when the last `L` tokens of the
/// history already occurred earlier, followed by token `t`, generating `t`
/// would extend the repeat to `L + 1`, so `t` loses
/// `multiplier * base^(L - allowed_length)` from its logit (for
/// `L >= allowed_length`; the largest `L` of any earlier occurrence counts).
/// A plain repetition penalty punishes every reused token; this punishes
/// only the continuation of a sequence already said, and more the longer it
/// gets, so a loop is broken within a few tokens while words, numbers and
/// punctuation stay free to recur.
///
/// Matches never cross a *sequence breaker* (for JSON: tokens with a quote,
/// bracket, comma, colon or newline), so structure that must repeat (keys,
/// separators) is not penalised. Bounded work: the look-back window (`last_n`,
/// default 1024 tokens) times the longest match measured (64 tokens; longer
/// matches count as 64).
#[derive(Debug, Clone, PartialEq)]
pub struct Dry {
    multiplier: f32,
    base: f32,
    allowed_length: usize,
    last_n: usize,
    /// Sorted, deduplicated.
    breakers: Vec<TokenId>,
}

/// Longest match [`Dry`] measures.
const DRY_MAX_MATCH: usize = 64;

impl Default for Dry {
    /// The defaults of the DRY proposal: multiplier 0.8, base 1.75, allowed
    /// length 2; no breakers.
    fn default() -> Self {
        Self {
            multiplier: 0.8,
            base: 1.75,
            allowed_length: 2,
            last_n: 1024,
            breakers: Vec::new(),
        }
    }
}

impl Dry {
    /// Errors unless `multiplier` is finite and `>= 0` (0 turns it off),
    /// `base` finite and `>= 1`, and `allowed_length >= 1`.
    pub fn new(multiplier: f32, base: f32, allowed_length: usize) -> Result<Self, SampleError> {
        if !(multiplier.is_finite() && multiplier >= 0.0) {
            return Err(invalid(
                "dry_multiplier",
                multiplier.into(),
                "a finite number >= 0",
            ));
        }
        if !(base.is_finite() && base >= 1.0) {
            return Err(invalid("dry_base", base.into(), "a finite number >= 1"));
        }
        if allowed_length == 0 {
            return Err(invalid("dry_allowed_length", 0.0, "at least 1"));
        }
        Ok(Self {
            multiplier,
            base,
            allowed_length,
            ..Self::default()
        })
    }

    /// Look at the last `n` tokens of the history only (at least 2).
    pub fn last_n(mut self, n: usize) -> Self {
        self.last_n = n.max(2);
        self
    }

    /// Add tokens a repeated sequence may not run across.
    pub fn breakers(mut self, tokens: impl IntoIterator<Item = TokenId>) -> Self {
        self.breakers.extend(tokens);
        self.breakers.sort_unstable();
        self.breakers.dedup();
        self
    }

    fn is_breaker(&self, t: TokenId) -> bool {
        self.breakers.binary_search(&t).is_ok()
    }

    /// The penalty of each token that would extend a repeat of `history`'s
    /// end: `(token, amount)`, each token once with its largest amount.
    pub fn penalties(&self, history: &[TokenId]) -> Vec<(TokenId, f32)> {
        let h = &history[history.len().saturating_sub(self.last_n)..];
        let n = h.len();
        let mut out: Vec<(TokenId, f32)> = Vec::new();
        if self.multiplier == 0.0 || n < 2 || self.is_breaker(h[n - 1]) {
            return out;
        }
        // The run of non-breakers at the end bounds every match.
        let tail = h
            .iter()
            .rev()
            .take(DRY_MAX_MATCH)
            .take_while(|&&t| !self.is_breaker(t))
            .count();
        // Candidate `h[j]` followed `h[..j]`; match `h[..j]`'s end with `h`'s.
        for j in 1..n {
            let mut len = 0;
            // Within `tail` every matched token is a non-breaker.
            while len < tail && len < j && h[j - 1 - len] == h[n - 1 - len] {
                len += 1;
            }
            if len >= self.allowed_length {
                let amount = self.multiplier * self.base.powi((len - self.allowed_length) as i32);
                let t = h[j];
                match out.iter_mut().find(|(id, _)| *id == t) {
                    Some(e) => e.1 = e.1.max(amount),
                    None => out.push((t, amount)),
                }
            }
        }
        out
    }
}

impl LogitsProcessor for Dry {
    fn process(&mut self, logits: &mut [f32], ctx: &Context<'_>) {
        for (t, amount) in self.penalties(ctx.history) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= amount;
            }
        }
    }
}

/// Add a fixed bias to some tokens' logits (`-inf` bans a token). Out-of-range
/// tokens are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitBias(Vec<(TokenId, f32)>);

impl LogitBias {
    /// Errors on a NaN or `+inf` bias.
    pub fn new(biases: impl IntoIterator<Item = (TokenId, f32)>) -> Result<Self, SampleError> {
        biases
            .into_iter()
            .map(|(t, b)| check_bias(b).map(|b| (t, b)))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl LogitsProcessor for LogitBias {
    fn process(&mut self, logits: &mut [f32], _: &Context<'_>) {
        for &(t, b) in &self.0 {
            if let Some(x) = logits.get_mut(t as usize) {
                *x += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn penalties_follow_the_usual_formula() {
        let mut p = Penalties::new(2.0, 0.5, 0.25).unwrap();
        let mut logits = vec![4.0, -4.0, 1.0, 3.0];
        p.process(&mut logits, &Context::new(&[0, 1, 1, 9]));
        assert_eq!(logits, vec![4.0 / 2.0 - 0.75, -8.0 - 1.0, 1.0, 3.0]);
        // last_n = 1 sees only token 1.
        let mut p = Penalties::new(2.0, 0.0, 0.0).unwrap().last_n(1);
        let mut logits = vec![4.0, 4.0];
        p.process(&mut logits, &Context::new(&[0, 1]));
        assert_eq!(logits, vec![4.0, 2.0]);
        // Counts were reset: a second call with no history changes nothing.
        let mut p = Penalties::new(1.0, 0.0, 1.0).unwrap();
        let mut logits = vec![1.0, 1.0];
        p.process(&mut logits, &Context::new(&[0, 0]));
        p.process(&mut logits, &Context::new(&[1]));
        assert_eq!(logits, vec![-1.0, 0.0]);
    }

    #[test]
    fn stand_alone_filters() {
        let base = vec![1.0, 3.0, 2.0, NEG, f32::NAN, 0.0];
        let mut l = base.clone();
        TopK::new(2).unwrap().process(&mut l, &Context::default());
        assert_eq!(l, vec![NEG, 3.0, 2.0, NEG, NEG, NEG]);

        let mut l = base.clone();
        MinP::new(0.3).unwrap().process(&mut l, &Context::default());
        // e^-1 = 0.37 >= 0.3, e^-2 = 0.14 < 0.3
        assert_eq!(&l[..4], &[NEG, 3.0, 2.0, NEG]);

        let mut l = base.clone();
        TopP::new(0.5).unwrap().process(&mut l, &Context::default());
        assert_eq!(l, vec![NEG, 3.0, NEG, NEG, NEG, NEG]);

        let mut l = base.clone();
        Temperature::new(0.0)
            .unwrap()
            .process(&mut l, &Context::default());
        assert_eq!(l, vec![NEG, 3.0, NEG, NEG, NEG, NEG]);

        let mut l = vec![1.0, 2.0];
        Temperature::new(0.5)
            .unwrap()
            .process(&mut l, &Context::default());
        assert_eq!(l, vec![2.0, 4.0]);

        let mut l = vec![1.0, 2.0];
        LogitBias::new([(1, -3.0), (7, 1.0)])
            .unwrap()
            .process(&mut l, &Context::default());
        assert_eq!(l, vec![1.0, -1.0]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Temperature::new(-0.1).is_err());
        assert!(Temperature::new(f32::NAN).is_err());
        assert!(Temperature::new(f32::INFINITY).is_err());
        assert!(TopK::new(0).is_err());
        assert!(TopP::new(0.0).is_err());
        assert!(TopP::new(1.01).is_err());
        assert!(TopP::new(f32::NAN).is_err());
        assert!(MinP::new(-0.01).is_err());
        assert!(MinP::new(1.5).is_err());
        assert!(Penalties::new(0.0, 0.0, 0.0).is_err());
        assert!(Penalties::new(1.0, f32::NAN, 0.0).is_err());
        assert!(LogitBias::new([(0, f32::INFINITY)]).is_err());
        assert!(LogitBias::new([(0, NEG)]).is_ok());
        let e = TopP::new(1.5).unwrap_err();
        assert_eq!(e.to_string(), "top_p = 1.5: expected a number in (0, 1]");
    }
}
