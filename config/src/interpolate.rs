//! `${VAR}` and `${VAR:-default}` in secrets and URLs, so credentials live in the environment, not in YAML.

/// Why a `${...}` expression cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// A `${` without its `}`; holds the whole text.
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
    /// A variable name that is not `[A-Za-z0-9_]+`.
    #[error("invalid environment variable name `{0}`")]
    BadName(String),
    /// `${VAR}` with `VAR` unset (or empty) and no default.
    #[error("environment variable `{0}` is not set (write `${{{0}:-default}}` to give a default)")]
    Unset(String),
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`) using `env`.
pub fn interpolate(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| InterpolateError::Unterminated(s.to_string()))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolateError::BadName(name.to_string()));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(InterpolateError::Unset(name.to_string())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{interpolate, InterpolateError};

    fn env(k: &str) -> Option<String> {
        (k == "SET").then(|| "value".to_string())
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(interpolate("a ${SET} b", &env).unwrap(), "a value b");
        assert_eq!(interpolate("${UNSET:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${SET:-dflt}", &env).unwrap(), "value");
        assert_eq!(interpolate("$$5 and $x", &env).unwrap(), "$5 and $x");
    }

    #[test]
    fn refuses_unset_variable_without_default() {
        let e = interpolate("${NOPE}", &env).unwrap_err();
        assert_eq!(e, InterpolateError::Unset("NOPE".into()));
        assert_eq!(
            e.to_string(),
            "environment variable `NOPE` is not set (write `${NOPE:-default}` to give a default)"
        );
    }

    #[test]
    fn refuses_malformed_expressions() {
        let e = interpolate("${OPEN", &env).unwrap_err();
        assert_eq!(e, InterpolateError::Unterminated("${OPEN".into()));
        assert_eq!(e.to_string(), "unterminated `${` in `${OPEN`");
        let e = interpolate("${A-B}", &env).unwrap_err();
        assert_eq!(e, InterpolateError::BadName("A-B".into()));
        assert_eq!(e.to_string(), "invalid environment variable name `A-B`");
    }
}
