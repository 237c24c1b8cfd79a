//! The GPU architecture as rocm.py sees it: `gcnArchName` such as
//! "gfx942:sramecc+:xnack-", and the substring predicates built on it
//! (vllm-backends.md §4.1). The predicates are substring tests on purpose:
//! that is how vLLM writes them, and it is why gfx908 is *not* "gfx9".

use crate::error::{Error, Result};
use serde::{Serialize, Serializer};

/// A parsed `gfx<major><minor><stepping>` name (plus any `:feature` suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuArch {
    /// As given, e.g. "gfx942" or "gfx942:sramecc+:xnack-".
    name: String,
    pub major: u32,
    pub minor: u32,
}

const EXAMPLES: &str = "expected gfx<major><minor><stepping> with major 9 to 12, e.g. gfx90a, gfx942, gfx950, gfx1100, gfx1201";

impl GpuArch {
    /// Parses like vLLM's device-capability parser: "gfx" then 3 or 4
    /// characters; the last is the stepping (a hex digit), the rest are
    /// decimal: one digit of minor, the remainder major (942 -> 9.4,
    /// 1100 -> 11.0). Majors outside 9..=12 are rejected, as vLLM does.
    pub fn parse(s: &str) -> Result<GpuArch> {
        let bad = || Error::invalid("GPU arch", format!("'{s}'"), EXAMPLES);
        let base = s.split(':').next().unwrap_or("");
        let digits = base.strip_prefix("gfx").ok_or_else(bad)?;
        if !(3..=4).contains(&digits.len()) || !digits.is_ascii() {
            return Err(bad());
        }
        let (version, stepping) = digits.split_at(digits.len() - 1);
        if !stepping
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            || !version.chars().all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let (major, minor) = version.split_at(version.len() - 1);
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if !(9..=12).contains(&major) {
            return Err(bad());
        }
        Ok(GpuArch {
            name: s.to_string(),
            major,
            minor,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn has(&self, any: &[&str]) -> bool {
        any.iter().any(|a| self.name.contains(a))
    }

    /// gfx90a (MI200), gfx942 (MI300), gfx950 (MI350). Not gfx908 or gfx906.
    pub fn on_gfx9(&self) -> bool {
        self.has(&["gfx90a", "gfx942", "gfx950"])
    }

    /// gfx942 or gfx950.
    pub fn on_mi3xx(&self) -> bool {
        self.has(&["gfx942", "gfx950"])
    }

    /// RDNA3/RDNA4 (gfx11*, gfx12*), excluding the CDNA part gfx1250.
    pub fn on_gfx1x(&self) -> bool {
        self.has(&["gfx11", "gfx12"]) && !self.has(&["gfx1250"])
    }

    /// gfx1200 or gfx1201.
    pub fn on_rdna4(&self) -> bool {
        self.has(&["gfx1200", "gfx1201"])
    }

    /// 2 gfx90a, 3 gfx942, 4 gfx950, 5 gfx1250, otherwise 0.
    pub fn cdna_version(&self) -> u32 {
        [("gfx90a", 2), ("gfx942", 3), ("gfx950", 4), ("gfx1250", 5)]
            .iter()
            .find(|(a, _)| self.name.contains(a))
            .map_or(0, |&(_, v)| v)
    }

    /// A short marketing name for human output.
    pub fn describe(&self) -> String {
        let family = match self.cdna_version() {
            2 => "CDNA2, MI200",
            3 => "CDNA3, MI300",
            4 => "CDNA4, MI350",
            5 => "CDNA5",
            _ if self.on_gfx1x() => "RDNA",
            _ => "other",
        };
        format!("{} ({family})", self.name)
    }
}

impl Default for GpuArch {
    /// MI300X.
    fn default() -> Self {
        GpuArch {
            name: "gfx942".into(),
            major: 9,
            minor: 4,
        }
    }
}

impl std::str::FromStr for GpuArch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GpuArch::parse(s)
    }
}

impl std::fmt::Display for GpuArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Serialize for GpuArch {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_minor_like_vllm() {
        let a = GpuArch::parse("gfx942:sramecc+:xnack-").unwrap();
        assert_eq!((a.major, a.minor), (9, 4));
        let b = GpuArch::parse("gfx1100").unwrap();
        assert_eq!((b.major, b.minor), (11, 0));
        assert_eq!(GpuArch::parse("gfx90a").unwrap().minor, 0);
    }

    #[test]
    fn rejects_garbage_naming_examples() {
        for bad in [
            "", "942", "gfx", "gfx9", "gfx94", "gfx94200", "gfx742", "gfx1300", "gfxabc", "GFX942",
            "gfx9x2",
        ] {
            let e = GpuArch::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("'{bad}'")) && e.contains("gfx942"),
                "{e}"
            );
        }
    }

    #[test]
    fn gfx9_predicate_is_a_substring_test() {
        let on = |s: &str| GpuArch::parse(s).unwrap().on_gfx9();
        assert!(on("gfx90a") && on("gfx942") && on("gfx950"));
        assert!(!on("gfx908") && !on("gfx906") && !on("gfx1100"));
        assert_eq!(GpuArch::parse("gfx90a").unwrap().cdna_version(), 2);
        assert!(!GpuArch::parse("gfx1250").unwrap().on_gfx1x());
    }
}
