//! Topic templates: `"activations-{namespace}"`, `"{/meta/topic}"`, or a fixed name.

use std::borrow::Cow;

use feedline_engine::{lookup, Event};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parse `{field}` placeholders; `{{` and `}}` are literal braces (not legal in topic names,
    /// but kept for completeness).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("`topic` must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => field.push(c),
                            None => return Err(format!("`{text}`: unclosed `{{`")),
                        }
                    }
                    if field.trim().is_empty() {
                        return Err(format!("`{text}`: empty `{{}}` placeholder"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field));
                }
                '}' => return Err(format!("`{text}`: `}}` without `{{`")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let template = Template { parts };
        if let Some(fixed) = template.fixed() {
            check_topic_name(fixed)?;
        }
        Ok(template)
    }

    /// True when there are no placeholders.
    pub fn is_fixed(&self) -> bool {
        self.fixed().is_some()
    }

    /// The topic name when there are no placeholders.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The topic for `event`; `Err` names the missing field or the bad result.
    pub fn render<'a>(&'a self, event: &Event) -> Result<Cow<'a, str>, String> {
        if let Some(fixed) = self.fixed() {
            return Ok(Cow::Borrowed(fixed));
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match lookup(&event.value, f) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                    Some(_) => return Err(format!("topic field `{f}` is not a string, number or boolean")),
                    None => return Err(format!("topic field `{f}` is missing")),
                },
            }
        }
        check_topic_name(&out)?;
        Ok(Cow::Owned(out))
    }
}

/// Kafka topic names: 1..=249 characters of `[a-zA-Z0-9._-]`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 249 || !name.chars().all(legal) || name == "." || name == ".." {
        return Err(format!(
            "`{name}` is not a valid Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::Metadata;

    fn event(v: Value) -> Event {
        Event::new(v, Metadata::default())
    }

    #[test]
    fn fixed_and_templated_topics() {
        let fixed = Template::parse("cacheInvalidation").unwrap();
        assert_eq!(fixed.fixed(), Some("cacheInvalidation"));
        let t = Template::parse("act-{namespace}-{/response/statusCode}").unwrap();
        assert!(!t.is_fixed());
        let e = event(serde_json::json!({"namespace": "guest", "response": {"statusCode": 0}}));
        assert_eq!(t.render(&e).unwrap(), "act-guest-0");
        let missing = t.render(&event(serde_json::json!({"namespace": "guest"}))).unwrap_err();
        assert!(missing.contains("/response/statusCode"), "{missing}");
        let by_ns = Template::parse("{ns}").unwrap();
        let bad = by_ns.render(&event(serde_json::json!({"ns": "a/b"}))).unwrap_err();
        assert!(bad.contains("not a valid Kafka topic name"), "{bad}");
    }

    #[test]
    fn malformed_templates_are_config_errors() {
        assert!(Template::parse("").is_err());
        assert!(Template::parse("a-{ns").is_err());
        assert!(Template::parse("a-{}").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("has space").is_err());
    }
}
