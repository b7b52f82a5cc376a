//! Property tests of the sampler and the stand-alone processors.

use proptest::prelude::*;
use std::collections::HashSet;
use twain_sample::{
    argmax, softmax, Context, LogitBias, LogitsProcessor, MinP, Penalties, SampleError, Sampler,
    SamplerBuilder, Temperature, TokenId, TokenMask, TopK, TopP,
};

/// Logits of a small vocabulary: peaky (wide range) or flat (narrow range,
/// large nuclei), so both top-p paths run.
fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-20.0f32..20.0, 1..200),
        prop::collection::vec(-1.0f32..1.0, 1..1500),
    ]
}

/// Logits whose argmax is unique with a margin of at least `margin`.
fn unique_max(mut l: Vec<f32>, margin: f32) -> (Vec<f32>, TokenId) {
    let i = argmax(&l).unwrap();
    let second = l
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i as usize)
        .map(|(_, &x)| x)
        .fold(f32::NEG_INFINITY, f32::max);
    if l[i as usize] < second + margin {
        l[i as usize] = second + margin;
    }
    (l, i)
}

/// Softmax in f64 as the reference.
fn reference_probs(l: &[f32]) -> Vec<f64> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = l.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[derive(Debug, Clone)]
struct Config {
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition: Option<f32>,
    presence: Option<f32>,
    frequency: Option<f32>,
    bias: Vec<(TokenId, f32)>,
    seed: u64,
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(0.0f32), 0.05f32..3.0],
        prop::option::of(1usize..1200),
        prop::option::of(0.01f32..=1.0),
        prop::option::of(0.0f32..=1.0),
        prop::option::of(0.5f32..2.0),
        prop::option::of(-1.0f32..2.0),
        prop::option::of(-1.0f32..2.0),
        prop::collection::vec((0u32..200, -5.0f32..5.0), 0..4),
        any::<u64>(),
    )
        .prop_map(
            |(temperature, top_k, top_p, min_p, repetition, presence, frequency, bias, seed)| {
                Config {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repetition,
                    presence,
                    frequency,
                    bias,
                    seed,
                }
            },
        )
}

/// The builder for `c`, with biases only on tokens below `vocab`.
fn builder(c: &Config, vocab: usize) -> SamplerBuilder {
    let mut b = Sampler::builder().temperature(c.temperature).seed(c.seed);
    if let Some(k) = c.top_k {
        b = b.top_k(k);
    }
    if let Some(p) = c.top_p {
        b = b.top_p(p);
    }
    if let Some(p) = c.min_p {
        b = b.min_p(p);
    }
    if let Some(r) = c.repetition {
        b = b.repetition_penalty(r);
    }
    if let Some(p) = c.presence {
        b = b.presence_penalty(p);
    }
    if let Some(f) = c.frequency {
        b = b.frequency_penalty(f);
    }
    for &(t, x) in &c.bias {
        if (t as usize) < vocab {
            b = b.logit_bias(t, x);
        }
    }
    b
}

/// A stand-alone processor, or a hostile closure, for random chains.
#[derive(Debug, Clone)]
enum Proc {
    TopK(usize),
    TopP(f32),
    MinP(f32),
    Temperature(f32),
    Penalties(f32, f32, f32),
    Bias(TokenId, f32),
    /// Set every logit to +inf: tries to revive masked tokens.
    AllInfinite,
    /// Set every logit to -inf: removes every token.
    Wipe,
    /// Write NaN at a position.
    Nan(usize),
}

fn procs() -> impl Strategy<Value = Vec<Proc>> {
    let one = prop_oneof![
        (1usize..20).prop_map(Proc::TopK),
        (0.01f32..=1.0).prop_map(Proc::TopP),
        (0.0f32..=1.0).prop_map(Proc::MinP),
        (0.0f32..3.0).prop_map(Proc::Temperature),
        (1.0f32..2.0, 0.0f32..1.0, 0.0f32..1.0).prop_map(|(a, b, c)| Proc::Penalties(a, b, c)),
        (0u32..200, -5.0f32..5.0).prop_map(|(t, b)| Proc::Bias(t, b)),
        Just(Proc::AllInfinite),
        Just(Proc::Wipe),
        (0usize..200).prop_map(Proc::Nan),
    ];
    prop::collection::vec(one, 0..4)
}

fn add_procs(mut b: SamplerBuilder, procs: &[Proc]) -> SamplerBuilder {
    for p in procs {
        b = match *p {
            Proc::TopK(k) => b.with_processor(TopK::new(k).unwrap()),
            Proc::TopP(x) => b.with_processor(TopP::new(x).unwrap()),
            Proc::MinP(x) => b.with_processor(MinP::new(x).unwrap()),
            Proc::Temperature(t) => b.with_processor(Temperature::new(t).unwrap()),
            Proc::Penalties(r, p, f) => b.with_processor(Penalties::new(r, p, f).unwrap()),
            Proc::Bias(t, x) => b.with_processor(LogitBias::new([(t, x)]).unwrap()),
            Proc::AllInfinite => {
                b.with_processor(|l: &mut [f32], _: &Context| l.fill(f32::INFINITY))
            }
            Proc::Wipe => b.with_processor(|l: &mut [f32], _: &Context| l.fill(f32::NEG_INFINITY)),
            Proc::Nan(i) => b.with_processor(move |l: &mut [f32], _: &Context| {
                let n = l.len();
                l[i % n] = f32::NAN;
            }),
        };
    }
    b
}

/// A mask over `n` tokens with at least one allowed, from random words.
fn mask_for(n: usize, words: &[u64], always: usize) -> TokenMask {
    let mut m = TokenMask::deny_all(n);
    for (w, src) in m.words_mut().iter_mut().zip(words.iter().cycle()) {
        *w = *src;
    }
    m.allow((always % n) as TokenId).unwrap();
    m
}

fn history(n: usize, raw: &[u32]) -> Vec<TokenId> {
    raw.iter().map(|&t| t % n as u32).collect()
}

proptest! {
    #[test]
    fn top_k_never_drops_the_argmax(l in logits(), k in 1usize..50, t in 0.05f32..3.0) {
        let (l, best) = unique_max(l, 0.0);
        let mut s = Sampler::builder().temperature(t).top_k(k).seed(0).build().unwrap();
        let d = s.distribution(&mut l.clone(), &[]).unwrap();
        prop_assert!(d.iter().any(|p| p.token == best));
        prop_assert!(d.len() <= k.min(l.len()));

        let mut x = l.clone();
        TopK::new(k).unwrap().process(&mut x, &Context::default());
        prop_assert_eq!(x[best as usize], l[best as usize]);
        prop_assert_eq!(x.iter().filter(|v| v.is_finite()).count(), k.min(l.len()));
    }

    #[test]
    fn top_p_never_drops_the_argmax_and_keeps_a_minimal_nucleus(
        l in logits(), p in 0.01f32..=1.0,
    ) {
        let (l, best) = unique_max(l, 0.0);
        let mut s = Sampler::builder().top_p(p).seed(0).build().unwrap();
        let d = s.distribution(&mut l.clone(), &[]).unwrap().to_vec();
        prop_assert!(d.iter().any(|q| q.token == best));
        let r = reference_probs(&l);
        let mass: f64 = d.iter().map(|q| r[q.token as usize]).sum();
        let smallest = d.iter().map(|q| r[q.token as usize]).fold(1.0, f64::min);
        prop_assert!(mass >= p as f64 - 1e-5, "mass {} < p {}", mass, p);
        prop_assert!(mass - smallest < p as f64 + 1e-5, "not minimal: {} - {} >= {}", mass, smallest, p);

        let mut x = l.clone();
        TopP::new(p).unwrap().process(&mut x, &Context::default());
        prop_assert_eq!(x[best as usize], l[best as usize]);
    }

    #[test]
    fn top_p_paths_agree(l in logits(), p in 0.01f32..1.0, k in 1usize..1200) {
        // Sampler on the whole vocabulary (guess or boundary) against the
        // stand-alone processor.
        let mut s = Sampler::builder().top_p(p).seed(0).build().unwrap();
        let got: HashSet<_> = s.distribution(&mut l.clone(), &[]).unwrap().iter().map(|q| q.token).collect();
        let mut x = l.clone();
        TopP::new(p).unwrap().process(&mut x, &Context::default());
        let want: HashSet<_> = (0..l.len() as TokenId).filter(|&i| x[i as usize].is_finite()).collect();
        prop_assert_eq!(&got, &want);

        // After top-k: heap (sorted) or selection path against the processors.
        let mut s = Sampler::builder().top_k(k).top_p(p).seed(0).build().unwrap();
        let got: HashSet<_> = s.distribution(&mut l.clone(), &[]).unwrap().iter().map(|q| q.token).collect();
        let mut x = l.clone();
        TopK::new(k).unwrap().process(&mut x, &Context::default());
        TopP::new(p).unwrap().process(&mut x, &Context::default());
        let want: HashSet<_> = (0..l.len() as TokenId).filter(|&i| x[i as usize].is_finite()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn min_p_never_drops_the_argmax_and_keeps_what_it_should(
        l in logits(), mp in 0.0f32..=1.0, t in 0.05f32..3.0,
    ) {
        let (l, best) = unique_max(l, 0.0);
        let mut s = Sampler::builder().temperature(t).min_p(mp).seed(0).build().unwrap();
        let d = s.distribution(&mut l.clone(), &[]).unwrap().to_vec();
        prop_assert!(d.iter().any(|q| q.token == best));
        let scaled: Vec<f32> = l.iter().map(|x| x / t).collect();
        let r = reference_probs(&scaled);
        let kept: HashSet<_> = d.iter().map(|q| q.token).collect();
        let top = r[best as usize];
        for (i, &q) in r.iter().enumerate() {
            let ratio = q / top;
            if ratio > mp as f64 * 1.0001 && q > 1e-30 {
                prop_assert!(kept.contains(&(i as TokenId)), "dropped {} with ratio {}", i, ratio);
            }
            if ratio < mp as f64 * 0.9999 {
                prop_assert!(!kept.contains(&(i as TokenId)), "kept {} with ratio {}", i, ratio);
            }
        }

        let mut x = l.clone();
        MinP::new(mp).unwrap().process(&mut x, &Context::default());
        prop_assert_eq!(x[best as usize], l[best as usize]);
    }

    #[test]
    fn distributions_are_normalised(
        l in logits(), c in config(), raw_history in prop::collection::vec(any::<u32>(), 0..50),
    ) {
        let h = history(l.len(), &raw_history);
        let mut s = builder(&c, l.len()).build().unwrap();
        let d = s.distribution(&mut l.clone(), &h).unwrap();
        let sum: f64 = d.iter().map(|q| q.prob as f64).sum();
        prop_assert!((sum - 1.0).abs() < 1e-4, "sum {}", sum);
        prop_assert!(d.iter().all(|q| q.prob > 0.0 && (q.token as usize) < l.len()));
        let unique: HashSet<_> = d.iter().map(|q| q.token).collect();
        prop_assert_eq!(unique.len(), d.len());
    }

    #[test]
    fn the_sampled_token_is_in_the_distribution(
        l in logits(), c in config(), raw_history in prop::collection::vec(any::<u32>(), 0..50),
    ) {
        let h = history(l.len(), &raw_history);
        let mut s = builder(&c, l.len()).build().unwrap();
        let d: HashSet<_> = s.distribution(&mut l.clone(), &h).unwrap().iter().map(|q| q.token).collect();
        let t = s.sample(&mut l.clone(), &h).unwrap();
        prop_assert!(d.contains(&t));
    }

    #[test]
    fn softmax_is_normalised_and_keeps_the_order(l in logits()) {
        let p = softmax(&l).unwrap();
        let sum: f64 = p.iter().map(|&x| x as f64).sum();
        prop_assert!((sum - 1.0).abs() < 1e-5);
        let r = reference_probs(&l);
        for i in 0..l.len() {
            prop_assert!((p[i] as f64 - r[i]).abs() < 1e-6 + 1e-5 * r[i]);
            for j in 0..l.len().min(50) {
                if l[i] > l[j] {
                    prop_assert!(p[i] >= p[j]);
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens(
        steps in prop::collection::vec(logits(), 1..6), c in config(), procs in procs(),
    ) {
        let n = steps[0].len();
        let mut a = add_procs(builder(&c, n), &procs).build().unwrap();
        let mut b = add_procs(builder(&c, n), &procs).build().unwrap();
        let mut h = Vec::new();
        for l in &steps {
            let mut l = l.clone();
            l.resize(n, 0.0);
            let ta = a.sample(&mut l.clone(), &h);
            let tb = b.sample(&mut l.clone(), &h);
            prop_assert_eq!(&ta, &tb);
            if let Ok(t) = ta {
                h.push(t);
            }
        }
    }

    #[test]
    fn a_tiny_temperature_is_greedy(
        l in logits(), t in 1e-6f32..1e-3, c in config(),
    ) {
        let (l, best) = unique_max(l, 0.1);
        let mut s = builder(&Config { temperature: t, repetition: None, presence: None,
            frequency: None, bias: Vec::new(), ..c }, l.len()).build().unwrap();
        prop_assert_eq!(s.sample(&mut l.clone(), &[]), Ok(best));
        prop_assert_eq!(Sampler::greedy().sample(&mut l.clone(), &[]), Ok(best));
    }

    #[test]
    fn the_mask_is_always_respected(
        l in logits(), c in config(), procs in procs(),
        words in prop::collection::vec(any::<u64>(), 1..8), always in any::<usize>(),
        raw_history in prop::collection::vec(any::<u32>(), 0..50),
        per_call in any::<bool>(),
    ) {
        let n = l.len();
        let mask = mask_for(n, &words, always);
        let h = history(n, &raw_history);
        let mut s = add_procs(builder(&c, n), &procs).build().unwrap();
        let t = if per_call {
            s.sample_masked(&mut l.clone(), &h, &mask)
        } else {
            s.set_mask(Some(mask.clone()));
            s.sample(&mut l.clone(), &h)
        };
        // Logits and biases are finite, so the fallback always has a token.
        let t = t.unwrap();
        prop_assert!(mask.is_allowed(t), "token {} is masked", t);
        if !per_call {
            let d = s.distribution(&mut l.clone(), &h).unwrap();
            prop_assert!(d.iter().all(|q| mask.is_allowed(q.token)));
        }
    }

    #[test]
    fn penalties_only_lower_seen_tokens(
        l in logits(), r in 1.0f32..3.0, presence in 0.0f32..2.0, frequency in 0.0f32..2.0,
        raw_history in prop::collection::vec(any::<u32>(), 0..50),
    ) {
        let h = history(l.len(), &raw_history);
        let seen: HashSet<_> = h.iter().copied().collect();
        let mut x = l.clone();
        Penalties::new(r, presence, frequency).unwrap().process(&mut x, &Context::new(&h));
        let any_penalty = r > 1.0 || presence > 0.0 || frequency > 0.0;
        for (i, (&before, &after)) in l.iter().zip(&x).enumerate() {
            if seen.contains(&(i as TokenId)) {
                prop_assert!(after <= before);
                if before > 0.0 && any_penalty {
                    prop_assert!(after < before);
                }
            } else {
                prop_assert_eq!(after, before);
            }
        }
    }

    #[test]
    fn sampling_never_panics(
        l in prop::collection::vec(
            prop_oneof![
                4 => -30.0f32..30.0,
                1 => Just(f32::NAN),
                1 => Just(f32::NEG_INFINITY),
                1 => Just(f32::INFINITY),
            ],
            0..100,
        ),
        t in any::<f32>(), k in any::<usize>(), p in any::<f32>(), mp in any::<f32>(),
        r in any::<f32>(), bias in any::<f32>(), h in prop::collection::vec(0u32..120, 0..20),
        procs in procs(),
    ) {
        let built = add_procs(
            Sampler::builder().temperature(t).top_k(k).top_p(p).min_p(mp)
                .repetition_penalty(r).logit_bias(3, bias).seed(1),
            &procs,
        )
        .build();
        let valid = t.is_finite() && t >= 0.0 && k >= 1 && p > 0.0 && p <= 1.0
            && (0.0..=1.0).contains(&mp) && r.is_finite() && r > 0.0
            && !bias.is_nan() && bias != f32::INFINITY;
        prop_assert_eq!(built.is_ok(), valid);
        if let Ok(mut s) = built {
            match s.sample(&mut l.clone(), &h) {
                Ok(token) => prop_assert!((token as usize) < l.len()),
                Err(e) => {
                    let expected = matches!(
                        e,
                        SampleError::EmptyLogits
                            | SampleError::NoFiniteLogits { .. }
                            | SampleError::TokenOutOfRange { .. }
                    );
                    prop_assert!(expected, "unexpected error {:?}", e);
                }
            }
        }
    }
}
