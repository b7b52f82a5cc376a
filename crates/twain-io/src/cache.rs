//! Where twain keeps files it makes once and reuses: the fetched default model and cached
//! conversions.

use std::ffi::OsString;
use std::path::PathBuf;

/// Where downloaded models and cached conversions live: `$TWAIN_CACHE_DIR`, else the user's
/// cache directory + `twain` (`$XDG_CACHE_HOME/twain` or `~/.cache/twain` on Linux and other
/// Unix, `~/Library/Caches/twain` on macOS, `%LOCALAPPDATA%\twain` on Windows), else
/// `./.twain-cache`.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    cache_dir_from(var("TWAIN_CACHE_DIR"), user_cache_dir(&var))
}

fn cache_dir_from(twain: Option<OsString>, user: Option<PathBuf>) -> PathBuf {
    match twain {
        Some(d) => PathBuf::from(d),
        None => user
            .map(|d| d.join("twain"))
            .unwrap_or_else(|| PathBuf::from(".twain-cache")),
    }
}

/// The platform's per-user cache directory, from the environment only.
fn user_cache_dir(var: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if cfg!(windows) {
        return var("LOCALAPPDATA").map(PathBuf::from);
    }
    if cfg!(target_os = "macos") {
        return var("HOME").map(|h| PathBuf::from(h).join("Library/Caches"));
    }
    // XDG: a relative $XDG_CACHE_HOME is invalid and ignored.
    match var("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(d) if d.is_absolute() => Some(d),
        _ => var("HOME").map(|h| PathBuf::from(h).join(".cache")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(unix, not(target_os = "macos")))]
    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn twain_cache_dir_wins_then_the_user_cache() {
        let user = Some(PathBuf::from("/home/u/.cache"));
        assert_eq!(
            cache_dir_from(Some("/x".into()), user.clone()),
            PathBuf::from("/x")
        );
        assert_eq!(
            cache_dir_from(None, user),
            PathBuf::from("/home/u/.cache/twain")
        );
        assert_eq!(cache_dir_from(None, None), PathBuf::from(".twain-cache"));
    }

    #[cfg(all(unix, not(target_os = "macos")))]
    #[test]
    fn xdg_cache_home_when_absolute_else_home_dot_cache() {
        let f = env(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(user_cache_dir(&f), Some(PathBuf::from("/xdg")));
        let f = env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")]);
        assert_eq!(user_cache_dir(&f), Some(PathBuf::from("/home/u/.cache")));
        let f = env(&[("HOME", "/home/u")]);
        assert_eq!(user_cache_dir(&f), Some(PathBuf::from("/home/u/.cache")));
        assert_eq!(user_cache_dir(&env(&[])), None);
    }
}
