//! `twain fetch`: fetch and convert the default model; print its path.

use crate::common::{resolve_model, KvCacheArg, ModelArgs, PresetArg};

#[derive(clap::Args)]
pub(crate) struct FetchArgs {
    /// Preset.
    #[arg(long, hide_possible_values = true)]
    preset: Option<PresetArg>,
}

pub(crate) fn run(a: FetchArgs) -> anyhow::Result<()> {
    // No preset: the default model's default conversion.
    let path = resolve_model(&ModelArgs {
        model: None,
        preset: a.preset,
        kv_share: None,
        kv_cache: KvCacheArg::Int8,
        adapter: None,
        adapter_scale: 1.0,
    })?;
    println!("{}", path.display());
    Ok(())
}
