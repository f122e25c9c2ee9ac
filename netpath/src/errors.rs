//! Teardown that carries on: every step runs, every failure is kept, and
//! the caller gets one error naming them all (as netavark's teardown does).

use anyhow::{Result, bail};

/// One error carrying every message, or Ok when there were none.
pub fn combine(errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        n => bail!(
            "{n} errors: {}",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_named() {
        assert!(combine(vec![]).is_ok());
        let one = combine(vec![anyhow::anyhow!("a")]).unwrap_err();
        assert_eq!(one.to_string(), "a");
        let two = combine(vec![
            anyhow::anyhow!("a"),
            anyhow::anyhow!("b").context("c"),
        ])
        .unwrap_err();
        assert_eq!(two.to_string(), "2 errors: a; c: b");
    }
}
