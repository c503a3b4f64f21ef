//! Name patterns as egress policy writes them (Azure Firewall application rules, FQDN
//! allow-lists): an exact name (`login.microsoftonline.com`) or a wildcard for every name
//! under a domain (`*.blob.core.windows.net`: one or more labels before it, not the domain
//! itself). Case does not matter; a trailing dot is ignored.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamePattern {
    /// Lowercase, no trailing dot; for a wildcard, the domain after `*.`.
    name: String,
    wildcard: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{pattern:?} is not a name pattern: {why} (e.g. api.example.com or *.blob.core.windows.net)"
)]
pub struct PatternError {
    pattern: String,
    why: &'static str,
}

impl NamePattern {
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let err = |why| PatternError {
            pattern: s.to_owned(),
            why,
        };
        let lower = s.trim().to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.trim_end_matches('.').to_owned()),
            None => (false, lower.trim_end_matches('.').to_owned()),
        };
        if name.is_empty() {
            return Err(err("it names no domain"));
        }
        if name.len() > 253 {
            return Err(err("longer than a DNS name can be (253)"));
        }
        if name.contains('*') {
            return Err(err(
                "`*` is allowed only as the whole first label (`*.domain`)",
            ));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(err("a label is empty or longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err("a label has a character DNS names do not use"));
            }
        }
        Ok(Self { name, wildcard })
    }

    /// Whether `name` (as flows carry it: lowercase, no trailing dot) is covered.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.name.len() + 1
                && name.ends_with(&self.name)
                && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
        } else {
            name == self.name
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

impl TryFrom<String> for NamePattern {
    type Error = PatternError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<NamePattern> for String {
    fn from(p: NamePattern) -> Self {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_names() {
        let blob = NamePattern::parse("*.Blob.Core.Windows.Net.").unwrap();
        assert_eq!(blob.to_string(), "*.blob.core.windows.net");
        assert!(blob.matches("acct1.blob.core.windows.net"));
        assert!(blob.matches("a.b.blob.core.windows.net"));
        assert!(
            !blob.matches("blob.core.windows.net"),
            "not the domain itself"
        );
        assert!(!blob.matches("evilblob.core.windows.net"));
        let login = NamePattern::parse("login.microsoftonline.com").unwrap();
        assert!(login.matches("login.microsoftonline.com"));
        assert!(!login.matches("x.login.microsoftonline.com"));
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        for (p, why) in [
            ("", "names no domain"),
            ("*.", "names no domain"),
            ("a.*.b", "`*` is allowed only"),
            ("**.b", "`*` is allowed only"),
            ("a..b", "empty"),
            ("a b.c", "character"),
        ] {
            let e = NamePattern::parse(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
            assert!(e.contains("e.g. api.example.com"), "{e}");
        }
    }
}
