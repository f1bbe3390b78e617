//! "Did you mean" suggestions: the nearest valid name to a misspelt one.

/// The candidate closest to `given`, if one is close enough to be a likely typo.
pub fn nearest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(given, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance <= 2.max(given.len().min(candidate.len()) / 3) && *distance < candidate.len()
        })
        .min()
        .map(|(_, candidate)| candidate)
}

/// A hint naming the nearest candidate, or listing the valid ones.
pub fn hint<'a>(given: &str, candidates: &[&'a str]) -> String {
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
        assert_eq!(nearest("ouptuts", ["run", "inputs", "outputs"]), Some("outputs"));
    }

    #[test]
    fn suggests_nothing_for_an_unrelated_name() {
        assert_eq!(nearest("zebra", ["run", "inputs", "outputs"]), None);
        assert!(hint("zebra", &["run", "inputs"]).contains("`run`, `inputs`"));
    }
}
