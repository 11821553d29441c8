//! `${VAR}` and `${VAR:-default}` in secrets and URLs, so credentials live in the environment, not in YAML.

/// Expands `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`) using `env`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
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
                .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name `{name}`"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                    ))
                }
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
    use super::interpolate;

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
        assert_eq!(
            e,
            "environment variable `NOPE` is not set (write `${NOPE:-default}` to give a default)"
        );
    }

    #[test]
    fn refuses_malformed_expressions() {
        assert!(interpolate("${OPEN", &env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(interpolate("${A-B}", &env)
            .unwrap_err()
            .contains("invalid environment variable name"));
    }
}
