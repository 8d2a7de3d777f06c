//! Built-in profiles (`docs/profiles.md`): complete configurations, from `profiles/NAME.toml`
//! at the repository root, compiled into the binary. `serve --profile NAME` runs one,
//! `init --profile NAME` writes it out for editing.
//!
//! Adding a profile is one line in [`PROFILES`]; the file's first line, a comment, is its
//! summary in `keywarden profiles`.

/// A built-in profile: its name and the text of its file.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// What `--profile` takes.
    pub name: &'static str,
    /// The TOML text of `profiles/NAME.toml`.
    pub text: &'static str,
}

/// `profile!("name")`: the profile of `profiles/name.toml`.
macro_rules! profile {
    ($name:literal) => {
        Profile {
            name: $name,
            text: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../profiles/",
                $name,
                ".toml"
            )),
        }
    };
}

/// Every built-in profile, by name.
pub const PROFILES: &[Profile] = &[
    profile!("falco"),
    profile!("falu"),
    profile!("facturascripts"),
    profile!("factuarea"),
    profile!("falara"),
];

impl Profile {
    /// The profile called `name`, or an error listing the known ones.
    pub fn find(name: &str) -> anyhow::Result<Profile> {
        PROFILES
            .iter()
            .find(|p| p.name == name)
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
                anyhow::anyhow!(
                    "no built-in profile {name:?}; the profiles are: {}",
                    known.join(", ")
                )
            })
    }

    /// The file's first comment line, without the `#` and the profile's name.
    pub fn summary(&self) -> &'static str {
        let line = self
            .text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix('#'))
            .map_or("", str::trim);
        line.strip_prefix(self.name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map_or(line, str::trim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywarden_server::config::Config;

    #[test]
    fn every_profile_parses_has_a_summary_and_a_unique_name() {
        let mut names = std::collections::BTreeSet::new();
        for p in PROFILES {
            assert!(names.insert(p.name), "{} twice", p.name);
            assert!(!p.summary().is_empty(), "{} has no summary line", p.name);
            Config::from_parts(p.text, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
        assert!(Profile::find("falco").is_ok());
        let e = Profile::find("nope").unwrap_err().to_string();
        assert!(e.contains("falco") && e.contains("nope"), "{e}");
    }
}
