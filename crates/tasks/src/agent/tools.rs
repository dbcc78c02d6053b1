//! What a tool call asks for, validated: browser steps go through the same parsing as a
//! `steps` task's (`model::parse_steps`), so the same limits apply.

use serde_json::{Map, Value};

use super::digest::clip;
use super::model_api::ToolCall;
use crate::model::{Step, parse_steps};

/// The tools that are browser steps (the step's `action` is the tool's name).
pub const STEP_TOOLS: [&str; 7] = [
    "goto", "click", "type", "press", "wait_for", "extract", "scroll",
];

/// Characters of an `ask_person` reason kept.
const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Step(Step),
    AskPerson(String),
    Finish(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Not one of the tools offered: the task fails.
    UnknownTool(String),
    /// The model is told, and may try again once.
    BadArguments(String),
}

pub fn action_of(call: &ToolCall) -> Result<Action, Problem> {
    let name = call.name.as_str();
    let known = STEP_TOOLS.contains(&name) || name == "ask_person" || name == "finish";
    if !known {
        return Err(Problem::UnknownTool(clip(name, 60)));
    }
    let arguments = call.arguments.clone().map_err(Problem::BadArguments)?;
    match name {
        "ask_person" => {
            only(&arguments, &["reason"])?;
            match arguments.get("reason") {
                Some(Value::String(r)) if !r.trim().is_empty() => {
                    Ok(Action::AskPerson(clip(r.trim(), MAX_REASON_CHARS)))
                }
                _ => Err(Problem::BadArguments(
                    "reason: required, a non-empty string".into(),
                )),
            }
        }
        "finish" => {
            only(&arguments, &["result"])?;
            match arguments.get("result") {
                None | Some(Value::Null) => Err(Problem::BadArguments("result: required".into())),
                Some(result) => Ok(Action::Finish(result.clone())),
            }
        }
        _ => {
            // Models often fill the unused alternatives with null or "": those mean absent.
            let mut step: Map<String, Value> = arguments
                .into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
                .collect();
            step.insert("action".into(), Value::String(name.to_owned()));
            let mut steps = parse_steps(&[Value::Object(step)]).map_err(|e| {
                let field = match e.field.strip_prefix("steps[0]") {
                    Some(rest) => rest.trim_start_matches('.').to_owned(),
                    None => e.field.clone(),
                };
                if field.is_empty() {
                    Problem::BadArguments(e.message)
                } else {
                    Problem::BadArguments(format!("{field}: {}", e.message))
                }
            })?;
            Ok(Action::Step(steps.remove(0)))
        }
    }
}

fn only(arguments: &Map<String, Value>, allowed: &[&str]) -> Result<(), Problem> {
    match arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(Problem::BadArguments(format!(
            "{}: unknown field; expected {}",
            clip(k, 40),
            allowed.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Target, WaitUntil};
    use serde_json::json;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: Ok(arguments.as_object().unwrap().clone()),
            echo: arguments.to_string(),
        }
    }

    #[test]
    fn steps_are_validated_like_a_steps_task() {
        assert_eq!(
            action_of(&call("click", json!({"text": "Sign in", "selector": null}))).unwrap(),
            Action::Step(Step::Click {
                target: Target::Text("Sign in".into())
            })
        );
        assert_eq!(
            action_of(&call(
                "wait_for",
                json!({"url": "/done", "selector": "", "timeout_ms": 500})
            ))
            .unwrap(),
            Action::Step(Step::WaitFor {
                until: WaitUntil::Url("/done".into()),
                timeout_ms: Some(500)
            })
        );
        assert_eq!(
            action_of(&call("click", json!({}))).unwrap_err(),
            Problem::BadArguments("needs one of: selector, text".into())
        );
        assert_eq!(
            action_of(&call("goto", json!({"url": "file:///etc/passwd"}))).unwrap_err(),
            Problem::BadArguments("url: must be an http:// or https:// URL".into())
        );
        assert_eq!(
            action_of(&call("scroll", json!({"dy": 10, "x": 1}))).unwrap_err(),
            Problem::BadArguments("x: unknown field; expected one of: action, dy".into())
        );
        // A tool that is a step but not offered to the model.
        assert_eq!(
            action_of(&call("sleep", json!({"ms": 10}))).unwrap_err(),
            Problem::UnknownTool("sleep".into())
        );
        assert_eq!(
            action_of(&call("fly", json!({}))).unwrap_err(),
            Problem::UnknownTool("fly".into())
        );
    }

    #[test]
    fn ask_person_and_finish() {
        assert_eq!(
            action_of(&call(
                "ask_person",
                json!({"reason": " solve the captcha "})
            ))
            .unwrap(),
            Action::AskPerson("solve the captcha".into())
        );
        assert!(matches!(
            action_of(&call("ask_person", json!({}))),
            Err(Problem::BadArguments(_))
        ));
        assert_eq!(
            action_of(&call("finish", json!({"result": {"a": 1}}))).unwrap(),
            Action::Finish(json!({"a": 1}))
        );
        assert_eq!(
            action_of(&call("finish", json!({"result": null}))).unwrap_err(),
            Problem::BadArguments("result: required".into())
        );
        let bad = ToolCall {
            arguments: Err("the arguments are not valid JSON".into()),
            ..call("finish", json!({}))
        };
        assert_eq!(
            action_of(&bad).unwrap_err(),
            Problem::BadArguments("the arguments are not valid JSON".into())
        );
    }
}
