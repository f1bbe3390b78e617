//! The `command` stage kind: any program, make-style, with `{inputs.KEY}`, `{outputs.KEY}`,
//! `{python}` and `{build_dir}` placeholders in its `run` list.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::{
    Action, InvocationContext, KindInfo, MachineFacts, Requirements, StageError, StageKind, Tool,
};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError, suggest};

pub(crate) static INFO: KindInfo = KindInfo {
    name: "command",
    keys: super::keys_of::<CommandKeys>,
    parse,
    scripts: &[],
    schema: |generator| generator.subschema_for::<CommandKeys>(),
};

/// `kind = "command"`: runs `run` in the pipeline's directory.
#[derive(Debug, Deserialize, JsonSchema)]
struct CommandKeys {
    /// The program and its arguments (no shell unless you run one).
    #[schemars(with = "Vec<String>", length(min = 1))]
    run: Spanned<Vec<Spanned<String>>>,
    /// Named inputs: paths (files or directories) or `@stage` / `@stage.key` references.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    inputs: IndexMap<String, Spanned<String>>,
    /// Named outputs (files or directories); the first is the primary output.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    outputs: IndexMap<String, Spanned<String>>,
}

/// One piece of a `run` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Input(String),
    Output(String),
    Python,
    BuildDir,
}

#[derive(Debug)]
struct Command {
    run: Vec<String>,
    template: Vec<Vec<Piece>>,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: CommandKeys = parser.deserialize(value)?;
    if keys.run.get_ref().is_empty() {
        return Err(parser
            .src
            .error(keys.run.span(), "`run` is empty")
            .with_help(
                "give the program and its arguments, e.g. run = [\"sh\", \"-c\", \"...\"]",
            ));
    }
    let inputs = keys
        .inputs
        .iter()
        .map(|(key, value)| parser.input(key, value))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = keys
        .outputs
        .iter()
        .map(|(key, value)| parser.output(key, value))
        .collect::<Result<Vec<_>, _>>()?;
    let input_keys: Vec<&str> = inputs.iter().map(|i| i.key.as_str()).collect();
    let output_keys: Vec<&str> = outputs.iter().map(|o| o.key.as_str()).collect();
    let mut template = Vec::new();
    for arg in keys.run.get_ref() {
        parser.check_no_nul(arg.get_ref(), arg.span(), "an argument of `run`")?;
        let pieces = split_placeholders(arg.get_ref())
            .and_then(|pieces| check_placeholders(pieces, &input_keys, &output_keys))
            .map_err(|(message, help)| parser.src.error(arg.span(), message).with_help(help))?;
        template.push(pieces);
    }
    Ok(Box::new(Command {
        run: keys
            .run
            .into_inner()
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        template,
        inputs,
        outputs,
    }))
}

type PlaceholderError = (String, String);

/// Splits `cat {inputs.a} > {outputs.out}` into text and placeholders; `{{` and `}}` are
/// literal braces.
fn split_placeholders(arg: &str) -> Result<Vec<Piece>, PlaceholderError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(position) = rest.find(['{', '}']) {
        text.push_str(&rest[..position]);
        let tail = &rest[position..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(unbalanced(arg));
        }
        let close = tail.find('}').ok_or_else(|| unbalanced(arg))?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(placeholder(&tail[1..close])?);
        rest = &tail[close + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn unbalanced(arg: &str) -> PlaceholderError {
    (
        format!("unbalanced brace in `{arg}`"),
        "placeholders look like {inputs.KEY}; write {{ or }} for a literal brace (e.g. ${{HOME}} in a shell)".into(),
    )
}

fn placeholder(name: &str) -> Result<Piece, PlaceholderError> {
    const KNOWN: &[&str] = &["inputs.KEY", "outputs.KEY", "python", "build_dir"];
    match name.split_once('.') {
        Some(("inputs", key)) => Ok(Piece::Input(key.to_string())),
        Some(("outputs", key)) => Ok(Piece::Output(key.to_string())),
        None if name == "python" => Ok(Piece::Python),
        None if name == "build_dir" => Ok(Piece::BuildDir),
        _ => {
            let head = name.split('.').next().unwrap_or(name);
            let hint = match suggest::nearest(head, ["inputs", "outputs", "python", "build_dir"]) {
                Some(best) => {
                    format!("did you mean `{{{best}...}}`? (write {{{{ for a literal brace)")
                }
                None => format!(
                    "placeholders are {}; write {{{{ for a literal brace",
                    KNOWN.join(", ")
                ),
            };
            Err((format!("unknown placeholder `{{{name}}}`"), hint))
        }
    }
}

fn check_placeholders(
    pieces: Vec<Piece>,
    input_keys: &[&str],
    output_keys: &[&str],
) -> Result<Vec<Piece>, PlaceholderError> {
    for piece in &pieces {
        let (key, keys, side) = match piece {
            Piece::Input(key) => (key, input_keys, "inputs"),
            Piece::Output(key) => (key, output_keys, "outputs"),
            _ => continue,
        };
        if !keys.contains(&key.as_str()) {
            let help = match suggest::nearest(key, keys.iter().copied()) {
                Some(best) => format!("did you mean `{{{side}.{best}}}`?"),
                None if keys.is_empty() => format!("the stage declares no {side}"),
                None => format!("the stage's {side} are: {}", keys.join(", ")),
            };
            return Err((
                format!(
                    "`{{{side}.{key}}}` names no declared {}",
                    &side[..side.len() - 1]
                ),
                help,
            ));
        }
    }
    Ok(pieces)
}

impl StageKind for Command {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self, _host: &MachineFacts) -> serde_json::Value {
        serde_json::json!({ "run": self.run })
    }

    fn requirements(&self) -> Requirements {
        let uses_python = self
            .template
            .iter()
            .flatten()
            .any(|piece| *piece == Piece::Python);
        Requirements {
            tool: if uses_python {
                Tool::Python
            } else {
                Tool::None
            },
            ..Requirements::default()
        }
    }

    fn action(&self, context: &InvocationContext) -> Result<Action, StageError> {
        let argv = self
            .template
            .iter()
            .map(|pieces| render(pieces, context))
            .collect();
        Ok(Action {
            inputs: context.inputs.values().cloned().collect(),
            outputs: context.outputs.values().cloned().collect(),
            ..Action::new(argv)
        })
    }
}

fn render(pieces: &[Piece], context: &InvocationContext) -> String {
    let path = |p: Option<&std::path::PathBuf>| {
        p.map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => text.clone(),
            Piece::Input(key) => path(context.inputs.get(key)),
            Piece::Output(key) => path(context.outputs.get(key)),
            Piece::Python => context.python().to_string_lossy().into_owned(),
            Piece::BuildDir => context.build_dir.to_string_lossy().into_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_placeholders_and_escapes() {
        let pieces = split_placeholders("cat {inputs.a} > {outputs.out} ${{HOME}}").unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Text("cat ".into()),
                Piece::Input("a".into()),
                Piece::Text(" > ".into()),
                Piece::Output("out".into()),
                Piece::Text(" ${HOME}".into()),
            ]
        );
    }

    #[test]
    fn rejects_unknown_and_unbalanced_placeholders() {
        assert!(
            split_placeholders("{input.a}")
                .unwrap_err()
                .1
                .contains("inputs")
        );
        assert!(
            split_placeholders("{inputs.a")
                .unwrap_err()
                .0
                .contains("unbalanced")
        );
        let pieces = split_placeholders("{outputs.ot}").unwrap();
        let error = check_placeholders(pieces, &[], &["out"]).unwrap_err();
        assert!(error.1.contains("{outputs.out}"), "{error:?}");
    }

    #[test]
    fn renders_resolved_paths() {
        let command = Command {
            run: vec![],
            template: vec![
                split_placeholders("{python}").unwrap(),
                split_placeholders("{inputs.src}:{outputs.out}:{build_dir}").unwrap(),
            ],
            inputs: vec![],
            outputs: vec![],
        };
        let mut context = InvocationContext::sample("/p", "/py");
        context.inputs.insert("src".to_string(), "a.txt".into());
        context
            .outputs
            .insert("out".to_string(), "tmp/o.txt".into());
        let action = command.action(&context).unwrap();
        assert_eq!(action.argv, vec!["/py", "a.txt:tmp/o.txt:build/x"]);
        assert_eq!(action.inputs, vec![std::path::PathBuf::from("a.txt")]);
        assert_eq!(command.requirements().tool, Tool::Python);
    }
}
