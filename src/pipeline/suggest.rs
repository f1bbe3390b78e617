//! "Did you mean" suggestions: the nearest valid name to a misspelt one.

/// The candidate closest to `given`, if one is close enough to be a likely typo.
pub(crate) fn nearest<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(given, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance <= 2.max(given.len().min(candidate.len()) / 3) && *distance < candidate.len()
        })
        // Equal edit distances: the one sharing the longer prefix wins (`gpu` -> `gpus`, not `cpu`).
        .min_by(|(d1, c1), (d2, c2)| {
            d1.cmp(d2)
                .then(strsim::jaro_winkler(given, c2).total_cmp(&strsim::jaro_winkler(given, c1)))
        })
        .map(|(_, candidate)| candidate)
}

/// A hint naming the nearest candidate, or listing the valid ones.
pub(crate) fn hint(given: &str, candidates: &[&str]) -> String {
    match nearest(given, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!(
            "expected one of: {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_a_close_name() {
        assert_eq!(nearest("rn", ["run", "inputs", "outputs"]), Some("run"));
        assert_eq!(
            nearest("ouptuts", ["run", "inputs", "outputs"]),
            Some("outputs")
        );
        assert_eq!(nearest("gpu", ["cpu", "memory", "gpus"]), Some("gpus"));
    }

    #[test]
    fn suggests_nothing_for_an_unrelated_name() {
        assert_eq!(nearest("zebra", ["run", "inputs", "outputs"]), None);
        assert!(hint("zebra", &["run", "inputs"]).contains("`run`, `inputs`"));
    }
}
