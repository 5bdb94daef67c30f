//! The patterns of a pull, compiled once so that matching a catalog against
//! them costs the names plus the patterns, not their product: a pull of 20,000
//! patterns over 20,000 tensors matched each name against each pattern in turn
//! and took minutes.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::protocol::wire::CatalogFile;

/// Globs compiled into one regex set at most: globset refuses a set whose
/// automaton outgrows its size limit, which some thousands of globs with
/// classes do.
const GLOBS_PER_SET: usize = 256;

/// Glob patterns over full tensor names (`*` also matches `.` and `/`); a
/// pattern equal to a name selects it even if it holds glob characters. None
/// match every name.
pub struct Patterns {
    /// Each distinct pattern, in the order given.
    texts: Vec<String>,
    /// Where each is in `texts`, by its text.
    exact: HashMap<String, usize>,
    /// The globs globset matches without a regex (`prefix*`, `*suffix`, a
    /// literal) by hashing or one automaton, whatever their number.
    plain: Vec<Set>,
    /// The other globs (classes, `?`, alternatives, a `*` inside or at both
    /// ends), in the order of the literal text they start with. Compiled one
    /// by one they cost a full DFA each (20,000 took 3 s and 370 MB); in sets,
    /// a name is matched only against the sets whose globs it shares a start
    /// with (those starting with a glob character, against every name).
    regex: Vec<Set>,
    /// Which sets of `regex` hold globs that start with this text.
    by_start: HashMap<String, Vec<usize>>,
    /// The lengths of the keys of `by_start`, each once.
    start_lengths: Vec<usize>,
}

impl Patterns {
    pub fn new(patterns: &[String]) -> Result<Patterns> {
        let mut texts = Vec::new();
        let mut exact = HashMap::new();
        let mut plain = Vec::new();
        let mut regex = Vec::new();
        for pattern in patterns {
            if exact.contains_key(pattern) {
                continue;
            }
            let glob =
                Glob::new(pattern).with_context(|| format!("invalid pattern {pattern:?}"))?;
            let index = texts.len();
            if plain_glob(pattern) {
                plain.push((index, glob));
            } else {
                regex.push((index, glob));
            }
            exact.insert(pattern.clone(), index);
            texts.push(pattern.clone());
        }
        regex.sort_by(|(_, a), (_, b)| literal_start(a.glob()).cmp(literal_start(b.glob())));
        let mut by_start: HashMap<String, Vec<usize>> = HashMap::new();
        for (set, part) in regex.chunks(GLOBS_PER_SET).enumerate() {
            for (_, glob) in part {
                let sets = by_start
                    .entry(literal_start(glob.glob()).to_string())
                    .or_default();
                if sets.last() != Some(&set) {
                    sets.push(set);
                }
            }
        }
        let mut start_lengths: Vec<usize> = by_start.keys().map(String::len).collect();
        start_lengths.sort_unstable();
        start_lengths.dedup();
        Ok(Patterns {
            texts,
            exact,
            plain: Set::build_all(&plain)?,
            regex: Set::build_all(&regex)?,
            by_start,
            start_lengths,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Whether a pattern selects `name`; with none, every name is selected.
    pub fn matches(&self, name: &str) -> bool {
        self.is_empty()
            || self.exact.contains_key(name)
            || self.plain.iter().any(|set| set.globs.is_match(name))
            || self
                .regex_sets_for(name)
                .any(|set| self.regex[set].globs.is_match(name))
    }

    /// Fails on the first pattern, in the order given, that selects no tensor
    /// of `catalog`.
    pub fn all_match(&self, catalog: &[CatalogFile]) -> Result<()> {
        let mut matched = vec![false; self.texts.len()];
        let mut unmatched = self.texts.len();
        let mut hits = Vec::new();
        for tensor in catalog.iter().flat_map(|f| &f.tensors) {
            if unmatched == 0 {
                return Ok(());
            }
            hits.clear();
            hits.extend(self.exact.get(&tensor.name));
            for set in &self.plain {
                set.matches_into(&tensor.name, &mut hits);
            }
            for set in self.regex_sets_for(&tensor.name) {
                self.regex[set].matches_into(&tensor.name, &mut hits);
            }
            for &pattern in &hits {
                if !std::mem::replace(&mut matched[pattern], true) {
                    unmatched -= 1;
                }
            }
        }
        match matched.iter().position(|&found| !found) {
            Some(pattern) => bail!("no served tensor matches {:?}", self.texts[pattern]),
            None => Ok(()),
        }
    }

    /// The sets of `regex` with a glob whose literal start `name` begins
    /// with, each once.
    fn regex_sets_for(&self, name: &str) -> impl Iterator<Item = usize> {
        let mut sets: Vec<usize> = self
            .start_lengths
            .iter()
            .filter_map(|&len| name.get(..len))
            .filter_map(|start| self.by_start.get(start))
            .flatten()
            .copied()
            .collect();
        sets.sort_unstable();
        sets.dedup();
        sets.into_iter()
    }
}

/// Globs compiled together, each with its place among the patterns.
struct Set {
    globs: GlobSet,
    places: Vec<usize>,
}

impl Set {
    /// `globs` in sets of at most [`GLOBS_PER_SET`], in order.
    fn build_all(globs: &[(usize, Glob)]) -> Result<Vec<Set>> {
        globs
            .chunks(GLOBS_PER_SET)
            .map(|part| {
                let mut builder = GlobSetBuilder::new();
                for (_, glob) in part {
                    builder.add(glob.clone());
                }
                let globs = builder.build().with_context(|| {
                    format!("cannot compile the patterns from {:?}", part[0].1.glob())
                })?;
                Ok(Set {
                    globs,
                    places: part.iter().map(|(place, _)| *place).collect(),
                })
            })
            .collect()
    }

    /// Appends the place of every glob that matches `name`.
    fn matches_into(&self, name: &str, hits: &mut Vec<usize>) {
        let mut found = Vec::new();
        self.globs.matches_into(name, &mut found);
        hits.extend(found.iter().map(|&i| self.places[i]));
    }
}

/// Whether globset matches `pattern` without a regex: a literal, or a literal
/// after a leading `*` or before a trailing one (not both).
fn plain_glob(pattern: &str) -> bool {
    let literal = pattern
        .strip_prefix('*')
        .or_else(|| pattern.strip_suffix('*'))
        .unwrap_or(pattern);
    !literal.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// The text before `pattern`'s first glob character: every name it matches
/// starts with it.
fn literal_start(pattern: &str) -> &str {
    let end = pattern
        .find(['*', '?', '[', '{', '\\'])
        .unwrap_or(pattern.len());
    &pattern[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::wire::TensorEntry;

    /// Runs `work` and fails the test if it takes longer than `bound`: set far
    /// above what linear work takes (on a slow, busy machine, in a debug build)
    /// and far below what work growing with the product of its inputs takes.
    pub(crate) fn finishes_within<T: Send + 'static>(
        bound: Duration,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(work()));
        finished
            .recv_timeout(bound)
            .unwrap_or_else(|_| panic!("{what} took longer than {bound:?}"))
    }

    fn catalog(names: impl IntoIterator<Item = String>) -> Vec<CatalogFile> {
        vec![CatalogFile {
            name: "model.safetensors".into(),
            format: "safetensors".into(),
            size: 0,
            tensors: names
                .into_iter()
                .map(|name| TensorEntry {
                    name,
                    dtype: "F32".into(),
                    shape: vec![1],
                    bytes: 4,
                })
                .collect(),
        }]
    }

    fn patterns(texts: &[&str]) -> Patterns {
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        Patterns::new(&texts).unwrap()
    }

    #[test]
    fn globs_and_exact_names_select_as_before() {
        let all = patterns(&[]);
        assert!(all.matches("anything"));
        let some = patterns(&[
            "weird[0]*",
            "layers.1[0-5].*",
            "*.bias",
            "head.?",
            "emb{ed,edding}",
            "*mlp*",
            "a/b*",
            "層.*.w",
        ]);
        for name in [
            "weird[0]*",
            "layers.12.weight",
            "x.y.bias",
            "head.0",
            "embed",
            "embedding",
            "layers.0.mlp.up",
            "a/b.c/d",
            "層.0.w",
        ] {
            assert!(some.matches(name), "{name}");
        }
        for name in [
            "weird1",
            "layers.16.weight",
            "bias.x",
            "head.10",
            "embe",
            "b/a",
            "層",
        ] {
            assert!(!some.matches(name), "{name}");
        }
        let catalog = catalog(["layers.12.weight".to_string(), "x.bias".into()]);
        assert!(
            patterns(&["*.bias", "layers.1[0-5].*"])
                .all_match(&catalog)
                .is_ok()
        );
        let missing = patterns(&["*.bias", "no.such.*", "head.?", "no.such.*"])
            .all_match(&catalog)
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no served tensor matches \"no.such.*\""
        );
    }

    #[test]
    fn many_patterns_over_many_names_cost_their_sum() {
        const N: usize = 20_000;
        let names = || (0..N).map(|i| format!("model.layers.{i}.weight"));
        let kinds: [fn(usize) -> String; 3] = [
            |i| format!("model.layers.{i}.weight"),
            |i| format!("model.layers.{i}.w*"),
            |i| format!("model.layers.{i}.[w]eigh?"),
        ];
        for kind in kinds {
            let texts: Vec<String> = (0..N).map(kind).collect();
            let catalog = catalog(names());
            let what = format!("{N} patterns like {:?} over {N} names", texts[0]);
            let selected = finishes_within(Duration::from_secs(30), &what, move || {
                let patterns = Patterns::new(&texts).unwrap();
                patterns.all_match(&catalog).unwrap();
                catalog[0]
                    .tensors
                    .iter()
                    .filter(|t| patterns.matches(&t.name))
                    .count()
            });
            assert_eq!(selected, N, "{what}");
        }
    }
}
