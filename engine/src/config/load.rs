//! Loading pipeline files into [`PipelineDef`]s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use toml_edit::{Document, Table};

use super::diagnostic::{did_you_mean, ConfigErrors, Diagnostic, SourceFile};
use super::locate::{locate, Converter};
use super::{ComponentDef, PipelineDef, SinkDef, SinkOptions, TestCase, SINK_OPTION_KEYS};
use crate::registry::{parse_typed, CheckContext, Entry, ParseFailure, Registry};

/// How `${VAR}` is resolved (the process environment in production, a map in tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

const TOP_LEVEL: &[&str] = &["name", "description", "source", "transforms", "sinks", "dead_letter", "test"];

/// Files named on the command line: files as given, directories expanded to their `*.toml`
/// files (sorted, not recursive).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut found: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "toml") && f.is_file())
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        errors.push(Diagnostic::whole_file(
                            p.clone(),
                            "no *.toml pipeline files in this directory",
                            None,
                        ));
                    }
                    files.extend(found);
                }
                Err(e) => errors.push(Diagnostic::whole_file(
                    p.clone(),
                    format!("cannot read directory: {e}"),
                    None,
                )),
            }
        } else {
            files.push(p.clone());
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Load every pipeline under `paths`; names must be unique across them.
pub fn load_paths(
    paths: &[PathBuf],
    registry: &Registry,
    env: EnvLookup<'_>,
) -> Result<Vec<PipelineDef>, ConfigErrors> {
    let files = expand_paths(paths)?;
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match load_file(&file, registry, env) {
            Ok(def) => {
                if let Some(first) = seen.get(&def.name) {
                    errors.push(Diagnostic::whole_file(
                        file.clone(),
                        format!("pipeline name `{}` is already used by {}", def.name, first.display()),
                        Some("set a distinct `name = \"...\"` at the top of one of the files".into()),
                    ));
                } else {
                    seen.insert(def.name.clone(), file.clone());
                    defs.push(def);
                }
            }
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    if errors.is_empty() {
        Ok(defs)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Load and validate one pipeline file. No network; local files only.
pub fn load_file(path: &Path, registry: &Registry, env: EnvLookup<'_>) -> Result<PipelineDef, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Diagnostic::whole_file(
            path.to_path_buf(),
            format!("cannot read pipeline file: {e}"),
            None,
        )])
    })?;
    let file = SourceFile { path: path.to_path_buf(), text: Arc::from(text) };
    let doc = Document::parse(file.text.to_string()).map_err(|e| {
        let message = e.message().trim().replace('\n', "; ");
        ConfigErrors(vec![Diagnostic::at(&file, e.span(), format!("invalid TOML: {message}"), None)])
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut loader = Loader {
        file: &file,
        root: doc.as_table(),
        registry,
        check: CheckContext { base_dir: base_dir.clone() },
        diagnostics: Vec::new(),
        substituted: Vec::new(),
    };
    let def = loader.pipeline(env, stem, base_dir, path);
    let mut diagnostics = loader.diagnostics;
    let secrets = loader.substituted;
    match def {
        Some(def) if diagnostics.is_empty() => Ok(def),
        _ => {
            for d in &mut diagnostics {
                redact(&mut d.message, &secrets);
                if let Some(hint) = &mut d.hint {
                    redact(hint, &secrets);
                }
            }
            Err(ConfigErrors(diagnostics))
        }
    }
}

/// Substituted environment values may be secrets: keep them out of messages and hints. A value
/// of four characters or more goes wherever it appears; a shorter one wherever it stands as a
/// token of its own (replacing every `a` in a message would make it unreadable, and a one-letter
/// secret inside another word tells nothing).
fn redact(message: &mut String, substituted: &[String]) {
    for s in substituted.iter().filter(|s| !s.is_empty()) {
        if s.len() >= 4 {
            if message.contains(s.as_str()) {
                *message = message.replace(s.as_str(), "***");
            }
        } else {
            *message = replace_tokens(message, s);
        }
    }
}

/// `text` with every occurrence of `word` not touching a letter, digit or `_` replaced by `***`.
fn replace_tokens(text: &str, word: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let (before, after) = (rest[..at].chars().next_back(), rest[at + word.len()..].chars().next());
        let before_ok = !(is_word(before) || at == 0 && is_word(out.chars().next_back()));
        out.push_str(&rest[..at]);
        if before_ok && !is_word(after) {
            out.push_str("***");
        } else {
            out.push_str(word);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

struct Loader<'a> {
    file: &'a SourceFile,
    root: &'a Table,
    registry: &'a Registry,
    check: CheckContext,
    diagnostics: Vec<Diagnostic>,
    substituted: Vec<String>,
}

fn path_of(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

impl Loader<'_> {
    fn error(&mut self, path: &[String], want_key: bool, message: impl Into<String>, hint: Option<String>) {
        let span = locate(self.root, path, want_key);
        self.diagnostics.push(Diagnostic::at(self.file, span, message, hint));
    }

    fn pipeline(
        &mut self,
        env: EnvLookup<'_>,
        stem: String,
        base_dir: PathBuf,
        path: &Path,
    ) -> Option<PipelineDef> {
        for (key, _) in self.root.iter() {
            if !TOP_LEVEL.contains(&key) {
                let hint = did_you_mean(key, TOP_LEVEL.iter().copied())
                    .or_else(|| Some(format!("a pipeline file has: {}", TOP_LEVEL.join(", "))));
                self.error(&path_of(&[key]), true, format!("unknown top-level key `{key}`"), hint);
            }
        }
        let mut conv = Converter { env, substituted: Vec::new(), failures: Vec::new() };
        let doc = conv.table(self.root);
        self.substituted = conv.substituted;
        for f in conv.failures {
            let hint = Some("export the variable, or give a default: ${NAME:-value}".into());
            self.diagnostics.push(Diagnostic::at(self.file, f.span, f.error.to_string(), hint));
        }
        let Value::Object(mut doc) = doc else { return None };

        let name = match doc.remove("name") {
            None => stem,
            Some(Value::String(s)) if valid_name(&s) => s,
            Some(_) => {
                self.error(
                    &path_of(&["name"]),
                    false,
                    "`name` must be a non-empty string of letters, digits, `-`, `_` or `.`",
                    None,
                );
                String::new()
            }
        };
        match doc.get("description") {
            None | Some(Value::String(_)) => {}
            Some(_) => self.error(&path_of(&["description"]), false, "`description` must be a string", None),
        }
        // Ids are unique per kind: metrics and dead-letter stages carry the kind too.
        let source = self.source(doc.remove("source"), &mut BTreeMap::new());
        let transforms = self.transforms(doc.remove("transforms"), &mut BTreeMap::new());
        let sinks = self.sinks(doc.remove("sinks"), &mut BTreeMap::new());
        let dead_letter = match doc.remove("dead_letter") {
            None => None,
            Some(v) => self.sink(v, &["dead_letter".into()], "dead_letter", &mut BTreeMap::new()),
        };
        let tests = self.tests(doc.remove("test"));
        Some(PipelineDef {
            name,
            file: path.to_path_buf(),
            base_dir,
            source: source?,
            transforms: transforms?,
            sinks: sinks?,
            dead_letter,
            tests: tests?,
        })
    }

    fn table(&mut self, value: Value, path: &[String], what: &str) -> Option<Map<String, Value>> {
        match value {
            Value::Object(m) => Some(m),
            _ => {
                self.error(path, false, format!("{what} must be a table"), None);
                None
            }
        }
    }

    /// Split off `type` and `id`; report a missing or unknown type.
    fn type_and_id<B: ?Sized>(
        &mut self,
        table: &mut Map<String, Value>,
        path: &[String],
        kind: &str,
        entries: &BTreeMap<&'static str, Entry<B>>,
        ids: &mut BTreeMap<String, ()>,
    ) -> Option<(String, &'static str)> {
        let known = || entries.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let ty = match table.remove("type") {
            Some(Value::String(t)) => t,
            Some(_) => {
                self.error(
                    &[path, &["type".into()]].concat(),
                    false,
                    "`type` must be a string",
                    Some(format!("{kind} types: {}", known())),
                );
                return None;
            }
            None => {
                self.error(
                    path,
                    false,
                    format!("{kind} has no `type`"),
                    Some(format!("add `type = \"...\"`; {kind} types: {}", known())),
                );
                return None;
            }
        };
        let Some((&type_name, _)) = entries.get_key_value(ty.as_str()) else {
            let hint = did_you_mean(&ty, entries.keys().copied())
                .unwrap_or_else(|| format!("{kind} types: {}", known()));
            self.error(
                &[path, &["type".into()]].concat(),
                false,
                format!("unknown {kind} type `{ty}`"),
                Some(hint),
            );
            return None;
        };
        let id = match table.remove("id") {
            None => {
                let mut id = type_name.to_owned();
                let mut n = 2;
                while ids.contains_key(&id) {
                    id = format!("{type_name}_{n}");
                    n += 1;
                }
                id
            }
            Some(Value::String(id)) if valid_name(&id) => id,
            Some(_) => {
                self.error(
                    &[path, &["id".into()]].concat(),
                    false,
                    "`id` must be a non-empty string of letters, digits, `-`, `_` or `.`",
                    None,
                );
                return None;
            }
        };
        if ids.insert(id.clone(), ()).is_some() {
            self.error(
                &[path, &["id".into()]].concat(),
                false,
                format!("component id `{id}` is used twice in this pipeline"),
                Some("give each component a distinct `id`".into()),
            );
            return None;
        }
        Some((id, type_name))
    }

    fn component<B: ?Sized>(
        &mut self,
        value: Value,
        path: &[String],
        kind: &str,
        entries: &BTreeMap<&'static str, Entry<B>>,
        ids: &mut BTreeMap<String, ()>,
        common: &[&str],
    ) -> Option<(ComponentDef<B>, Map<String, Value>)> {
        let mut table = self.table(value, path, kind)?;
        let (id, type_name) = self.type_and_id(&mut table, path, kind, entries, ids)?;
        let common_values: Map<String, Value> =
            common.iter().filter_map(|k| table.remove(*k).map(|v| (k.to_string(), v))).collect();
        let entry = entries.get(type_name)?;
        let given = Value::Object(table);
        match (entry.parse)(given.clone(), &self.check) {
            Ok(config) => {
                let what = format!("{kind} `{type_name}`");
                self.ranges(&(entry.schema)(), &given, path, &what).then_some(())?;
                Some((ComponentDef { id, type_name: type_name.to_owned(), config }, common_values))
            }
            Err(failure) => {
                let schema = (entry.schema)();
                self.report(failure, path, &format!("{kind} `{type_name}`"), &field_names(&schema, common));
                None
            }
        }
    }

    /// Report every number outside its declared range; true when there is none.
    fn ranges(&mut self, schema: &Value, given: &Value, path: &[String], what: &str) -> bool {
        let found = super::ranges::check(schema, given);
        for f in &found {
            let full: Vec<String> = path.iter().cloned().chain(f.path.iter().cloned()).collect();
            let field = full.last().cloned().unwrap_or_default();
            self.error(
                &full,
                false,
                format!("invalid value for `{field}` in {what}: {}", f.message),
                Some(f.hint.clone()),
            );
        }
        found.is_empty()
    }

    fn report(&mut self, failure: ParseFailure, path: &[String], what: &str, fields: &[String]) {
        match failure {
            ParseFailure::Problem(p) => {
                let full: Vec<String> = path.iter().cloned().chain(p.field.clone()).collect();
                self.error(&full, false, format!("{what}: {}", p.message), p.hint);
            }
            ParseFailure::Serde { path: sub, message } => {
                let mut full: Vec<String> = path.to_vec();
                full.extend(sub);
                if let Some(field) = between(&message, "unknown field `", "`") {
                    full.push(field.to_owned());
                    let hint = did_you_mean(field, fields.iter().map(String::as_str))
                        .or_else(|| Some(format!("valid keys: {}", fields.join(", "))));
                    self.error(&full, true, format!("unknown field `{field}` in {what}"), hint);
                } else if let Some(field) = between(&message, "missing field `", "`") {
                    self.error(
                        &full,
                        false,
                        format!("{what} is missing the required field `{field}`"),
                        Some(format!("add `{field} = ...`")),
                    );
                } else if let Some(variant) = between(&message, "unknown variant `", "`") {
                    let options = expected_list(&message);
                    let hint = did_you_mean(variant, options.iter().map(String::as_str))
                        .or_else(|| (!options.is_empty()).then(|| format!("one of: {}", options.join(", "))));
                    self.error(
                        &full,
                        false,
                        format!(
                            "`{variant}` is not a valid value for `{}` in {what}",
                            full.last().map_or("", String::as_str)
                        ),
                        hint,
                    );
                } else {
                    let field = full.last().cloned().unwrap_or_default();
                    self.error(
                        &full,
                        false,
                        format!("invalid value for `{field}` in {what}: {message}"),
                        None,
                    );
                }
            }
        }
    }

    fn source(
        &mut self,
        value: Option<Value>,
        ids: &mut BTreeMap<String, ()>,
    ) -> Option<ComponentDef<dyn crate::registry::BuildSource>> {
        let Some(value) = value else {
            let types = self.registry.source_types().collect::<Vec<_>>().join(", ");
            self.diagnostics.push(Diagnostic::at(
                self.file,
                Some(0..0),
                "a pipeline needs a [source]",
                Some(format!("add a [source] table with `type` = one of: {types}")),
            ));
            return None;
        };
        let entries = &self.registry.sources;
        self.component(value, &path_of(&["source"]), "source", entries, ids, &[]).map(|(c, _)| c)
    }

    fn transforms(
        &mut self,
        value: Option<Value>,
        ids: &mut BTreeMap<String, ()>,
    ) -> Option<Vec<ComponentDef<dyn crate::registry::BuildTransform>>> {
        let Some(value) = value else { return Some(Vec::new()) };
        let Value::Array(items) = value else {
            self.error(
                &path_of(&["transforms"]),
                false,
                "`transforms` must be an array of tables",
                Some("write each transform as [[transforms]]".into()),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        let entries = &self.registry.transforms;
        for (i, item) in items.into_iter().enumerate() {
            match self.component(item, &["transforms".into(), i.to_string()], "transform", entries, ids, &[])
            {
                Some((c, _)) => out.push(c),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn sinks(&mut self, value: Option<Value>, ids: &mut BTreeMap<String, ()>) -> Option<Vec<SinkDef>> {
        let Some(Value::Array(items)) = value else {
            let hint = "add at least one [[sinks]] table with `type = \"...\"`".to_string();
            self.error(
                &path_of(&["sinks"]),
                true,
                "a pipeline needs at least one [[sinks]] entry",
                Some(hint),
            );
            return None;
        };
        if items.is_empty() {
            self.error(&path_of(&["sinks"]), true, "a pipeline needs at least one [[sinks]] entry", None);
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            match self.sink(item, &["sinks".into(), i.to_string()], "sink", ids) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn sink(
        &mut self,
        value: Value,
        path: &[String],
        kind: &str,
        ids: &mut BTreeMap<String, ()>,
    ) -> Option<SinkDef> {
        let entries = &self.registry.sinks;
        let (component, common) = self.component(value, path, kind, entries, ids, SINK_OPTION_KEYS)?;
        let common = Value::Object(common);
        let options: SinkOptions = match parse_typed(common.clone()) {
            Ok(o) => o,
            Err(f) => {
                let fields: Vec<String> = SINK_OPTION_KEYS.iter().map(|s| s.to_string()).collect();
                self.report(f, path, &format!("{kind} `{}`", component.type_name), &fields);
                return None;
            }
        };
        if options.rate_limit.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            self.error(
                &[path, &["rate_limit".into()]].concat(),
                false,
                "`rate_limit` must be a positive number of events per second",
                Some("leave it out for no cap".into()),
            );
            return None;
        }
        let schema = serde_json::to_value(schemars::schema_for!(SinkOptions)).unwrap_or(Value::Null);
        let what = format!("{kind} `{}`", component.type_name);
        self.ranges(&schema, &common, path, &what).then_some(())?;
        Some(SinkDef { component, options })
    }

    fn tests(&mut self, value: Option<Value>) -> Option<Vec<TestCase>> {
        let Some(value) = value else { return Some(Vec::new()) };
        let Value::Array(items) = value else {
            self.error(
                &path_of(&["test"]),
                false,
                "`test` must be an array of tables",
                Some("write each case as [[test]]".into()),
            );
            return None;
        };
        let mut out = Vec::new();
        let fields = ["name", "input", "expect", "expect_rejected"].map(String::from);
        for (i, item) in items.into_iter().enumerate() {
            match parse_typed::<TestCase>(item) {
                Ok(t) => out.push(t),
                Err(f) => self.report(f, &["test".into(), i.to_string()], "test case", &fields),
            }
        }
        Some(out)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn between<'m>(message: &'m str, start: &str, end: &str) -> Option<&'m str> {
    let rest = &message[message.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// `expected one of `a`, `b`` or `expected `a`` from a serde message.
fn expected_list(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected") else { return Vec::new() };
    message[i..].split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Top-level property names of a config schema plus the engine's common keys.
fn field_names(schema: &Value, common: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    names.extend(["type", "id"].iter().chain(common).map(|s| s.to_string()));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_redacted_where_they_stand_alone_and_long_ones_everywhere() {
        let secrets = vec!["x9".to_owned(), "hunter2".to_owned()];
        let mut message = "`x9` is not a number; x9y and ax9 stay; key=hunter2abc".to_owned();
        redact(&mut message, &secrets);
        assert_eq!(message, "`***` is not a number; x9y and ax9 stay; key=***abc");
        assert_eq!(replace_tokens("x9x9 x9", "x9"), "x9x9 ***");
    }
}
