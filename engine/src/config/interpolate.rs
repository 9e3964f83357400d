//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in string values; `$$` is a literal `$`.
//!
//! Interpolation runs on parsed string values, not on the file text, so positions in error
//! messages always point at what the user wrote.

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// `${VAR}` with VAR unset.
    #[error("environment variable `{0}` is not set")]
    Missing(String),
    /// `${VAR:?message}` with VAR unset or empty.
    #[error("environment variable `{name}` is required: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The author's message.
        message: String,
    },
    /// `${` without a matching `}` or with a bad name.
    #[error("malformed variable reference `{0}`: write ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}")]
    Malformed(String),
}

/// Interpolate `input` with `lookup`. Also returns the values substituted, so callers can keep
/// them out of error messages (they may be secrets).
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), InterpolationError> {
    if !input.contains('$') {
        return Ok((input.to_owned(), Vec::new()));
    }
    let mut out = String::with_capacity(input.len());
    let mut used = Vec::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_start) = after.strip_prefix('{') {
            let end =
                body_start.find('}').ok_or_else(|| InterpolationError::Malformed(rest[i..].to_owned()))?;
            let body = &body_start[..end];
            let value = resolve(body, lookup)?;
            if !value.is_empty() {
                used.push(value.clone());
            }
            out.push_str(&value);
            rest = &body_start[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

fn resolve(body: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpolationError> {
    let (name, op) = match body.find(':') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(InterpolationError::Malformed(format!("${{{body}}}")));
    }
    let value = lookup(name);
    match op {
        None => value.ok_or_else(|| InterpolationError::Missing(name.to_owned())),
        Some(op) if op.starts_with('-') => {
            Ok(value.filter(|v| !v.is_empty()).unwrap_or_else(|| op[1..].to_owned()))
        }
        Some(op) if op.starts_with('?') => value.filter(|v| !v.is_empty()).ok_or_else(|| {
            InterpolationError::Required { name: name.to_owned(), message: op[1..].to_owned() }
        }),
        Some(_) => Err(InterpolationError::Malformed(format!("${{{body}}}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOSTS" => Some("k1:9092,k2:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let (s, used) = interpolate("a ${HOSTS} b ${NOPE:-dflt} $$HOME ${EMPTY:-x}", &env).unwrap();
        assert_eq!(s, "a k1:9092,k2:9092 b dflt $HOME x");
        assert_eq!(used, vec!["k1:9092,k2:9092", "dflt", "x"]);
    }

    #[test]
    fn reports_missing_required_and_malformed() {
        assert_eq!(interpolate("${NOPE}", &env), Err(InterpolationError::Missing("NOPE".into())));
        assert_eq!(
            interpolate("${EMPTY:?set it to the cluster id}", &env),
            Err(InterpolationError::Required {
                name: "EMPTY".into(),
                message: "set it to the cluster id".into()
            })
        );
        assert!(matches!(interpolate("${HOSTS", &env), Err(InterpolationError::Malformed(_))));
        assert!(matches!(interpolate("${1X}", &env), Err(InterpolationError::Malformed(_))));
        assert!(matches!(interpolate("${A:+b}", &env), Err(InterpolationError::Malformed(_))));
    }

    #[test]
    fn a_lone_dollar_is_kept() {
        assert_eq!(interpolate("cost $5", &env).unwrap().0, "cost $5");
    }
}
