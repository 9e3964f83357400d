//! Configuration errors that point at the exact place in the pipeline file.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// One problem in one pipeline file, with where it is and what to do about it.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, if we can tell.
    pub hint: Option<String>,
    /// The offending source line and the marked width, for display.
    snippet: Option<(String, usize)>,
}

impl Diagnostic {
    /// A diagnostic at byte range `span` of `source` (or at the top of the file).
    pub fn at(
        file: &SourceFile,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        let span = span.unwrap_or(0..0);
        let text = &file.text;
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let source_line = text[line_start..line_end].trim_end_matches('\r').to_owned();
        let end = floor_char_boundary(text, span.end.clamp(start, line_end));
        let width = text[start..end].chars().count().max(1);
        Self {
            file: file.path.clone(),
            line,
            column,
            message: message.into(),
            hint,
            snippet: Some((source_line, width)),
        }
    }

    /// A diagnostic about the file as a whole (unreadable, duplicate name across files).
    pub fn whole_file(file: PathBuf, message: impl Into<String>, hint: Option<String>) -> Self {
        Self { file, line: 1, column: 1, message: message.into(), hint, snippet: None }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "  --> {}:{}:{}", self.file.display(), self.line, self.column)?;
        if let Some((src, width)) = &self.snippet {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {src}")?;
            let lead: String =
                src.chars().take(self.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(*width))?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Everything wrong with a set of pipeline files.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(f, "{} error(s) in pipeline configuration", self.0.len())
    }
}

/// A pipeline file's path and text, shared by the diagnostics made from it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// As given on the command line.
    pub path: PathBuf,
    /// Full text.
    pub text: Arc<str>,
}

/// `did you mean ...?` for the closest of `candidates` to `word`, if it is close enough.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_column_snippet_and_hint() {
        let file = SourceFile { path: "p.toml".into(), text: "a = 1\n[sink]\nbrokerz = \"x\"\n".into() };
        let start = file.text.find("brokerz").unwrap();
        let d = Diagnostic::at(
            &file,
            Some(start..start + 7),
            "unknown field `brokerz`",
            Some("did you mean `brokers`?".into()),
        );
        assert_eq!((d.line, d.column), (3, 1));
        let text = d.to_string();
        assert!(text.contains("--> p.toml:3:1"), "{text}");
        assert!(text.contains("3 | brokerz = \"x\"\n  | ^^^^^^^\n"), "{text}");
        assert!(text.contains("= hint: did you mean `brokers`?"), "{text}");
    }

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(did_you_mean("brokerz", ["brokers", "topic"]).as_deref(), Some("did you mean `brokers`?"));
        assert_eq!(did_you_mean("zzzzzz", ["brokers", "topic"]), None);
    }
}
