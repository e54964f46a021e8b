//! Layer lists as configs write them: `"17-19,21-23,25-29"`.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The largest layer index a list may name (far past any model; it bounds what a typo such as
/// `"0-99999999999"` can allocate).
pub const MAX_LAYER: usize = 65_535;

/// A set of 0-based layer indices, written as comma-separated inclusive ranges and single layers
/// (`"17-19,21-23,25-29"`, `"31"`). Kept sorted; a layer listed twice is an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerSet(Vec<usize>);

impl LayerSet {
    /// The set of `layers` (sorted, repeats removed).
    pub fn new(layers: impl IntoIterator<Item = usize>) -> Self {
        let mut layers: Vec<usize> = layers.into_iter().collect();
        layers.sort_unstable();
        layers.dedup();
        Self(layers)
    }

    /// The layers in increasing order.
    pub fn layers(&self) -> &[usize] {
        &self.0
    }

    /// Whether `layer` is in the set.
    pub fn contains(&self, layer: usize) -> bool {
        self.0.binary_search(&layer).is_ok()
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for LayerSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |problem: String| {
            Err(format!(
                "bad layer list \"{text}\": {problem} (write ranges like \"17-30\" or \
                 \"17-19,21-23,25-29\")"
            ))
        };
        let index = |s: &str| -> Result<usize, String> {
            let s = s.trim();
            if s.is_empty() {
                return Err("a layer number is missing".into());
            }
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{s}` is not a layer number"));
            }
            match s.parse::<usize>() {
                Ok(layer) if layer <= MAX_LAYER => Ok(layer),
                _ => Err(format!(
                    "layer {s} is past {MAX_LAYER}, the largest accepted"
                )),
            }
        };
        let mut layers = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return bad("empty entry".into());
            }
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => match (index(lo), index(hi)) {
                    (Ok(lo), Ok(hi)) => (lo, hi),
                    (Err(e), _) | (_, Err(e)) => return bad(format!("in `{part}`: {e}")),
                },
                None => match index(part) {
                    Ok(layer) => (layer, layer),
                    Err(e) => return bad(e),
                },
            };
            if lo > hi {
                return bad(format!("range `{part}` runs backwards"));
            }
            layers.extend(lo..=hi);
        }
        let mut sorted = layers.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("layer {} is listed twice", w[0]));
        }
        Ok(Self(sorted))
    }
}

impl fmt::Display for LayerSet {
    /// Compressed ranges: `17-19,21-23,25-29`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

impl Serialize for LayerSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LayerSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = LayerSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a layer list such as \"17-30\" or \"17-19,21-23\", or a layer number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LayerSet, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LayerSet, E> {
                usize::try_from(v)
                    .ok()
                    .filter(|&l| l <= MAX_LAYER)
                    .map(|l| LayerSet(vec![l]))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "layer {v} is past {MAX_LAYER}, the largest accepted"
                        ))
                    })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LayerSet, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("layer {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_parse_and_print() {
        let l: LayerSet = " 17 - 19, 21-23 ,25-29,31".parse().unwrap();
        assert_eq!(l.len(), 12);
        assert!(l.contains(22) && !l.contains(20));
        assert_eq!(l.to_string(), "17-19,21-23,25-29,31");
        assert_eq!(LayerSet::new([5, 3, 4, 9, 3]).to_string(), "3-5,9");
        assert_eq!(LayerSet::default().to_string(), "");
        assert!(LayerSet::default().is_empty());
        let e = "0-18446744073709551615".parse::<LayerSet>().unwrap_err();
        assert!(e.contains("past 65535"), "{e}");
        assert!("65535".parse::<LayerSet>().is_ok());
        assert!("99999999999999999999999".parse::<LayerSet>().is_err());
        let e = " ".parse::<LayerSet>().unwrap_err();
        assert!(e.contains("empty entry"), "{e}");
    }
}
