//! The DRY repeat penalty: what it penalises, by how much, where it stops.

use proptest::prelude::*;
use twain_sample::{Context, Dry, LogitsProcessor, SampleError};

#[test]
fn penalises_the_token_that_would_extend_a_repeat() {
    let dry = Dry::default();
    // "1 2 3" recurs at the end; after it came 4.
    let p = dry.penalties(&[1, 2, 3, 4, 1, 2, 3]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, 4);
    assert!((p[0].1 - 0.8 * 1.75).abs() < 1e-6, "{p:?}");
    // Longer repeats cost exponentially more.
    let p = dry.penalties(&[1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 5]);
    assert_eq!(p[0].0, 9);
    assert!((p[0].1 - 0.8 * 1.75f32.powi(3)).abs() < 1e-5, "{p:?}");
    // A repeat shorter than the allowed length costs nothing.
    assert!(dry.penalties(&[1, 2, 7, 1]).is_empty());
    let mut logits = vec![0.0f32; 8];
    Dry::default().process(&mut logits, &Context::new(&[1, 2, 3, 4, 1, 2, 3]));
    assert!(logits[4] < 0.0);
    assert!(logits.iter().enumerate().all(|(i, &l)| i == 4 || l == 0.0));
}

#[test]
fn matches_stop_at_breakers_and_the_window() {
    let p = Dry::default().penalties(&[5, 6, 7, 9, 5, 6, 7]);
    assert_eq!(p[0].0, 9);
    // With 6 a breaker the repeat at the end is one token long.
    assert!(Dry::default()
        .breakers([6])
        .penalties(&[5, 6, 7, 9, 5, 6, 7])
        .is_empty());
    // Ending on a breaker: nothing.
    assert!(Dry::default()
        .breakers([7])
        .penalties(&[5, 6, 7, 9, 5, 6, 7])
        .is_empty());
    // The earlier occurrence outside the window is not seen.
    assert!(Dry::default()
        .last_n(4)
        .penalties(&[5, 6, 7, 9, 5, 6, 7])
        .is_empty());
    // Off.
    assert!(Dry::new(0.0, 1.75, 2)
        .unwrap()
        .penalties(&[1, 2, 3, 1, 2])
        .is_empty());
}

#[test]
fn bad_parameters_are_typed_errors() {
    for (m, b, a) in [
        (-1.0, 1.75, 2),
        (f32::NAN, 1.75, 2),
        (0.8, 0.5, 2),
        (0.8, f32::INFINITY, 2),
        (0.8, 1.75, 0),
    ] {
        assert!(
            matches!(Dry::new(m, b, a), Err(SampleError::InvalidParameter { .. })),
            "{m} {b} {a}"
        );
    }
}

/// The longest suffix of `h` that also ends at an earlier position.
fn longest_repeat_at_end(h: &[u32]) -> usize {
    let n = h.len();
    (0..n.saturating_sub(1))
        .map(|e| (0..=e).take_while(|&k| h[e - k] == h[n - 1 - k]).count())
        .max()
        .unwrap_or(0)
}

proptest! {
    /// Greedy decoding of a "model" that prefers to cycle through 0..4 by a
    /// margin of 2 over 12 other tokens: without DRY the whole history
    /// becomes one repeat; with it no repeat grows past the length whose
    /// penalty exceeds the margin (0.8 * 1.75^(L-2) > 2 from L = 4, so the
    /// token making L = 5 is never chosen while an unpenalised one is left: the
    /// longest repeat is 4).
    #[test]
    fn greedy_decoding_of_a_loop_breaks_it(first in 0u32..4, steps in 20usize..120) {
        let run = |dry: Option<&mut Dry>| {
            let mut dry = dry;
            let mut h = vec![first];
            let mut worst = 0;
            for _ in 0..steps {
                let mut logits = vec![0.0f32; 16];
                for (i, l) in logits.iter_mut().enumerate() {
                    *l = -(i as f32) * 1e-3;
                }
                logits[((h.last().unwrap() + 1) % 4) as usize] = 2.0;
                if let Some(d) = dry.as_deref_mut() {
                    d.process(&mut logits, &Context::new(&h));
                }
                let next = twain_sample::argmax(&logits).unwrap();
                h.push(next);
                worst = worst.max(longest_repeat_at_end(&h));
            }
            worst
        };
        prop_assert!(run(None) >= steps - 4);
        let mut dry = Dry::default();
        prop_assert!(run(Some(&mut dry)) <= 4);
    }
}
