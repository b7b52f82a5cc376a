//! The cross-layer KV-sharing plan: which layers own K/V projections and a
//! cache, and which earlier layer's cache every other layer reads. This is
//! the one place that interprets `ModelConfig::kv_source`.

use crate::CoreError;

/// Where every layer's keys and values come from.
///
/// Layer `l` *owns* its K/V when `source(l) == l`: it has K/V projections and
/// writes a cache. Otherwise it reads the cache of `source(l)`, an earlier
/// owning layer, and has no K/V weights. The AFM plan
/// ([`KvPlan::shared`]) is "layers `0..n1` own their K/V; layers `n1..L` read
/// layer `n1 - 1`".
///
/// ```
/// use twain_core::KvPlan;
/// let plan = KvPlan::shared(8, 5, 3).unwrap();
/// assert_eq!(plan.n_caches(), 5);
/// assert_eq!(plan.source(7), 4);
/// assert_eq!(plan.last_owner(), 4);
/// assert_eq!(plan.prefill_skip_start(), Some(5));
/// assert_eq!(plan.cache_index(6), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPlan {
    source: Vec<usize>,
    cache_of: Vec<usize>,
    n_caches: usize,
    last_owner: usize,
}

impl KvPlan {
    /// Every layer owns its K/V (a standard checkpoint).
    pub fn unshared(n_layers: usize) -> Result<Self, CoreError> {
        Self::from_sources((0..n_layers).collect())
    }

    /// "The first `a` of every `a + b` layers own K/V": layers `0..n1` own
    /// K/V and layers `n1..L` read layer `n1 - 1`, `n1 = round(a / (a + b) * L)`
    /// (at least 1).
    pub fn shared(n_layers: usize, a: usize, b: usize) -> Result<Self, CoreError> {
        if a == 0 || n_layers == 0 {
            return Err(CoreError::Config(format!(
                "KV-share ratio {a}:{b} on {n_layers} layers leaves no layer owning K/V"
            )));
        }
        let n1 = ((a as f64 / (a + b) as f64) * n_layers as f64).round() as usize;
        let n1 = n1.clamp(1, n_layers);
        Self::from_sources(
            (0..n_layers)
                .map(|l| if l < n1 { l } else { n1 - 1 })
                .collect(),
        )
    }

    /// A plan from each layer's source layer; checks that every source is an
    /// earlier (or the same) layer that owns its K/V, and that layer 0 owns.
    pub fn from_sources(source: Vec<usize>) -> Result<Self, CoreError> {
        if source.is_empty() {
            return Err(CoreError::Config("KV plan of 0 layers".into()));
        }
        for (l, &s) in source.iter().enumerate() {
            if s > l || source[s] != s {
                return Err(CoreError::Config(format!(
                    "layer {l} reads the K/V of layer {s}, which is not an earlier (or the same) layer owning K/V"
                )));
            }
        }
        let mut cache_of = vec![0; source.len()];
        let (mut n_caches, mut last_owner) = (0, 0);
        for l in 0..source.len() {
            if source[l] == l {
                cache_of[l] = n_caches;
                n_caches += 1;
                last_owner = l;
            } else {
                cache_of[l] = cache_of[source[l]];
            }
        }
        Ok(Self {
            source,
            cache_of,
            n_caches,
            last_owner,
        })
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.source.len()
    }

    /// The layer whose cache layer `l` reads.
    pub fn source(&self, l: usize) -> usize {
        self.source[l]
    }

    /// Every layer's source, in order (what `ModelConfig::kv_source` holds).
    pub fn sources(&self) -> &[usize] {
        &self.source
    }

    /// Layer `l` has K/V projections and writes a cache.
    pub fn owns(&self, l: usize) -> bool {
        self.source[l] == l
    }

    /// Index (among the state's caches) of the cache layer `l` reads.
    pub fn cache_index(&self, l: usize) -> usize {
        self.cache_of[l]
    }

    /// Number of caches a state holds (= owning layers).
    pub fn n_caches(&self) -> usize {
        self.n_caches
    }

    /// The last layer that writes a cache.
    pub fn last_owner(&self) -> usize {
        self.last_owner
    }

    /// The first layer whose states at earlier prompt positions feed nothing
    /// (every layer after the last owner): prefill runs it and the layers after
    /// it on the last prompt token only. `None` when every layer up to the
    /// end writes a cache.
    pub fn prefill_skip_start(&self) -> Option<usize> {
        let s = self.last_owner + 1;
        (s < self.source.len()).then_some(s)
    }

    /// Tensors of layer `l` that only an owning layer may have
    /// (`blk.{l}.attn_k.weight`, ..., with the k-norm).
    pub fn kv_tensor_names(l: usize) -> [String; 5] {
        [
            format!("blk.{l}.attn_k.weight"),
            format!("blk.{l}.attn_v.weight"),
            format!("blk.{l}.attn_k.bias"),
            format!("blk.{l}.attn_v.bias"),
            format!("blk.{l}.attn_k_norm.weight"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn afm_plan_on_smollm2_and_afm_shapes() {
        let p = KvPlan::shared(30, 5, 3).unwrap();
        assert_eq!(p.n_caches(), 19);
        assert_eq!(p.prefill_skip_start(), Some(19));
        assert!((19..30).all(|l| p.source(l) == 18 && p.cache_index(l) == 18));
        let p = KvPlan::shared(56, 5, 3).unwrap();
        assert_eq!(p.n_caches(), 35);
    }

    #[test]
    fn unshared_has_no_skip_and_bad_plans_are_errors() {
        let p = KvPlan::unshared(4).unwrap();
        assert_eq!(p.prefill_skip_start(), None);
        assert_eq!(p.n_caches(), 4);
        assert!(KvPlan::from_sources(vec![0, 2, 2]).is_err());
        assert!(KvPlan::from_sources(vec![0, 0, 1]).is_err());
        assert!(KvPlan::from_sources(vec![]).is_err());
        assert!(KvPlan::shared(0, 5, 3).is_err());
        assert!(KvPlan::shared(4, 0, 3).is_err());
    }
}
