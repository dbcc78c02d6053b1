//! The model's side: an OpenAI-compatible Chat Completions API (OpenAI, llama.cpp's
//! server, vLLM, Ollama). What is sent: `model`, `messages`, `tools` and `tool_choice`; what
//! is read back: `choices[0].message.{content, tool_calls}` and `usage.total_tokens`.
//!
//! Nothing else is sent (no `max_tokens`, `temperature`, `parallel_tool_calls`): each of
//! them is refused or spelled differently by one server or model family or another.

use std::time::Duration;

use serde_json::{Value, json};

use super::digest::clip;

/// Answers larger than this are refused (a reply is a few kilobytes).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Characters of an error answer's body quoted in the task's error.
const ERROR_BODY_CHARS: usize = 200;
/// The pause before the one retry of a 429, a 5xx or a failed connection, unless the
/// server's `Retry-After` asks for another (at most [`MAX_RETRY_PAUSE`]).
const RETRY_PAUSE: Duration = Duration::from_secs(2);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(20);

/// The tools the model may call: the browser steps the agent exposes, `ask_person` and
/// `finish`. Parameters are plain JSON Schema objects (no `strict`), which OpenAI and
/// the local servers' grammar converters all accept.
pub fn tool_definitions() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    let selector = string("A CSS selector, as listed in the page digest (e.g. \"#email\").");
    let tools = [
        (
            "goto",
            "Open a URL in the browser's tab.",
            json!({"url": string("An http:// or https:// URL.")}),
            vec!["url"],
        ),
        (
            "click",
            "Click an element: give either its selector or its visible text, not both.",
            json!({
                "selector": selector,
                "text": string("The element's visible text, when no selector fits."),
            }),
            vec![],
        ),
        (
            "type",
            "Click into a field and type text into it, after what it already holds.",
            json!({"selector": selector, "text": string("The text to type.")}),
            vec!["selector", "text"],
        ),
        (
            "press",
            "Press a key in the focused element.",
            json!({"key": string("A key name: Enter, Tab, Escape, ArrowDown, Backspace, or one character.")}),
            vec!["key"],
        ),
        (
            "wait_for",
            "Wait until an element appears, a text shows on the page, or the URL contains a \
             string: give exactly one of selector, text and url.",
            json!({
                "selector": selector,
                "text": string("Text the page must show."),
                "url": string("A part of the URL to wait for."),
                "timeout_ms": {"type": "integer", "description": "How long to wait at most, in milliseconds."},
            }),
            vec![],
        ),
        (
            "extract",
            "Read an element's text (a field's value) and keep it in the task's result under name.",
            json!({"selector": selector, "name": string("The name to keep the value under.")}),
            vec!["selector", "name"],
        ),
        (
            "scroll",
            "Scroll the page vertically.",
            json!({"dy": {"type": "integer", "description": "Pixels to scroll: positive down, negative up."}}),
            vec!["dy"],
        ),
        (
            "ask_person",
            "Ask the person watching the browser to take over: for a captcha, a login, a \
             one-time code, a payment, or a decision only they can make. Waits until they hand \
             control back, then you see the page again.",
            json!({"reason": string("What you need the person to do, in one sentence.")}),
            vec!["reason"],
        ),
        (
            "finish",
            "End the task with its result. Call it once the goal is reached (or cannot be).",
            json!({"result": {"description": "The result the goal asks for: a short text, or a JSON object with the values found."}}),
            vec!["result"],
        ),
    ];
    Value::Array(
        tools
            .into_iter()
            .map(|(name, description, properties, required)| {
                json!({
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": description,
                        "parameters": {
                            "type": "object",
                            "properties": properties,
                            "required": required,
                            "additionalProperties": false,
                        },
                    },
                })
            })
            .collect(),
    )
}

/// The request body. `tool_choice` is `"auto"`: every server named above accepts it when
/// it serves tools at all, whereas `"required"` is refused by some versions of them and
/// ignored by others; a reply without a tool call is nudged once by the loop instead.
pub fn request_body(model: &str, messages: Vec<Value>, tools: &Value) -> Value {
    json!({
        "model": model,
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
    })
}

/// One tool call of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments parsed (an object), or why they could not be.
    pub arguments: Result<serde_json::Map<String, Value>, String>,
    /// The arguments as echoed back in the conversation: the text received when it is valid
    /// JSON and short, `{}` otherwise (some servers parse it again when applying their
    /// chat template, and refuse invalid JSON).
    pub echo: String,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
    /// `usage.total_tokens`, or an estimate when the server gives no usage.
    pub tokens: u64,
}

/// Reads a Chat Completions answer. `estimate` stands for the tokens when `usage` is absent.
pub fn parse_reply(body: &[u8], estimate: u64, turn: u32) -> Result<Reply, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| "the model's answer is not valid JSON".to_owned())?;
    let invalid = |why: &str| format!("the model's answer is not valid: {why}");
    let message = value
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("no choices"))?
        .first()
        .ok_or_else(|| invalid("no choices"))?
        .get("message")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("the first choice has no message"))?;
    let content = match message.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        // Some servers answer content parts.
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty());
    let mut calls = Vec::new();
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, call) in list.iter().enumerate() {
                let function = call
                    .get("function")
                    .and_then(Value::as_object)
                    .ok_or_else(|| invalid("a tool call has no function"))?;
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("a tool call has no function name"))?
                    .to_owned();
                let id = match call.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_owned(),
                    _ => format!("call_{turn}_{i}"),
                };
                let (arguments, echo) = parse_arguments(function.get("arguments"));
                calls.push(ToolCall {
                    id,
                    name,
                    arguments,
                    echo,
                });
            }
        }
        Some(_) => return Err(invalid("tool_calls is not a list")),
    }
    let usage = value.get("usage");
    let total = usage
        .and_then(|u| u.get("total_tokens"))
        .and_then(Value::as_u64);
    let sum = || {
        let part = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
        Some(part("prompt_tokens")? + part("completion_tokens").unwrap_or(0))
    };
    let tokens = total.or_else(sum).unwrap_or(estimate);
    Ok(Reply {
        content,
        calls,
        tokens,
    })
}

/// The arguments (a JSON string per the API; an object from some servers).
fn parse_arguments(
    raw: Option<&Value>,
) -> (Result<serde_json::Map<String, Value>, String>, String) {
    const MAX_ECHO: usize = 8000;
    let parsed = match raw {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Value::Object(Default::default())),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("the arguments are not valid JSON ({e})")),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err("the arguments are not a JSON object".to_owned()),
    };
    match parsed {
        Ok(Value::Object(map)) => {
            let text = Value::Object(map.clone()).to_string();
            let echo = if text.len() <= MAX_ECHO {
                text
            } else {
                "{}".to_owned()
            };
            (Ok(map), echo)
        }
        Ok(_) => (
            Err("the arguments are not a JSON object".to_owned()),
            "{}".to_owned(),
        ),
        Err(e) => (Err(e), "{}".to_owned()),
    }
}

/// The assistant message as kept in the conversation.
pub fn assistant_message(content: Option<&str>, calls: &[ToolCall]) -> Value {
    let content = content
        .map(|c| Value::String(clip(c, 2000)))
        .unwrap_or(Value::Null);
    if calls.is_empty() {
        return json!({"role": "assistant", "content": content});
    }
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.echo},
            })
        })
        .collect();
    json!({"role": "assistant", "content": content, "tool_calls": calls})
}

pub fn tool_message(call_id: &str, content: &str) -> Value {
    json!({"role": "tool", "tool_call_id": call_id, "content": content})
}

/// Why a call failed: a timeout (the loop words it, knowing which limit applied) or an
/// error that becomes the task's error as it stands.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    Timeout,
    Failed(String),
}

/// The API's endpoint and credentials.
pub struct ModelApi<'a> {
    pub client: &'a reqwest::Client,
    pub url: String,
    pub api_key: Option<&'a str>,
}

impl<'a> ModelApi<'a> {
    pub fn new(client: &'a reqwest::Client, api_base: &str, api_key: Option<&'a str>) -> Self {
        Self {
            client,
            url: format!("{}/chat/completions", api_base.trim_end_matches('/')),
            api_key: api_key.filter(|k| !k.is_empty()),
        }
    }

    /// Sends `body` and reads the reply, all within `timeout`. A 429, a 5xx or a failed
    /// connection is tried once more after a short pause (the `Retry-After` the server asks
    /// for, up to 20 s, when it fits in the time left): these are often passing (a busy local
    /// server, a rate limit) and a task is costly to restart. Other errors are final.
    pub async fn complete(
        &self,
        body: &Value,
        timeout: Duration,
        estimate: u64,
        turn: u32,
    ) -> Result<Reply, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let mut retried = false;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.attempt(&body));
            let failure = match attempt.await {
                Err(_) => return Err(CallError::Timeout),
                Ok(Ok(answer)) => {
                    let estimate = estimate + answer.len() as u64 / 4;
                    return parse_reply(&answer, estimate, turn).map_err(CallError::Failed);
                }
                Ok(Err(failure)) => failure,
            };
            let pause = match &failure {
                Failure::Final(_) => None,
                Failure::Passing { retry_after, .. } => {
                    Some(retry_after.unwrap_or(RETRY_PAUSE).min(MAX_RETRY_PAUSE))
                }
            };
            let message = self.redact(failure.message());
            match pause {
                Some(pause)
                    if !retried
                        && tokio::time::Instant::now() + pause + Duration::from_secs(1)
                            < deadline =>
                {
                    tracing::info!(error = %message, "the model's API failed; trying once more");
                    retried = true;
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(CallError::Failed(message)),
            }
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.to_vec());
        if let Some(key) = self.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|e| Failure::Passing {
            // Without the URL: it is configuration, and could carry a secret.
            message: format!("the model's API could not be reached: {}", e.without_url()),
            retry_after: None,
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut answer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(Failure::Final(format!(
                            "the model's answer is larger than {} MiB",
                            MAX_ANSWER_BYTES / (1024 * 1024)
                        )));
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure::Passing {
                        message: format!("the model's answer was cut off: {}", e.without_url()),
                        retry_after: None,
                    });
                }
            }
        }
        if status.is_success() {
            return Ok(answer);
        }
        let text = String::from_utf8_lossy(&answer);
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let message = format!(
            "the model's API answered {}: {}",
            status.as_u16(),
            clip(text.trim(), ERROR_BODY_CHARS)
        );
        if status.as_u16() == 429 || status.is_server_error() {
            Err(Failure::Passing {
                message,
                retry_after,
            })
        } else {
            Err(Failure::Final(message))
        }
    }

    /// The key never leaves in an error, even when a server echoes it back.
    pub fn redact(&self, message: String) -> String {
        match self.api_key {
            Some(key) if key.len() >= 4 => message.replace(key, "[redacted]"),
            _ => message,
        }
    }
}

enum Failure {
    Passing {
        message: String,
        retry_after: Option<Duration>,
    },
    Final(String),
}

impl Failure {
    fn message(self) -> String {
        match self {
            Failure::Passing { message, .. } | Failure::Final(message) => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_have_schemas() {
        let tools = tool_definitions();
        let names: Vec<&str> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "goto",
                "click",
                "type",
                "press",
                "wait_for",
                "extract",
                "scroll",
                "ask_person",
                "finish"
            ]
        );
        for tool in tools.as_array().unwrap() {
            assert_eq!(tool["type"], "function");
            assert_eq!(tool["function"]["parameters"]["type"], "object");
        }
    }

    #[test]
    fn reads_tool_calls_and_usage() {
        let body = json!({
            "choices": [{"message": {"role": "assistant", "content": " thinking ", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "click", "arguments": "{\"text\":\"Go\"}"}},
                {"type": "function", "function": {"name": "scroll", "arguments": {"dy": 5}}},
                {"id": "c3", "type": "function", "function": {"name": "type", "arguments": "{oops"}}
            ]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        let reply = parse_reply(body.to_string().as_bytes(), 99, 3).unwrap();
        assert_eq!(reply.content.as_deref(), Some("thinking"));
        assert_eq!(reply.tokens, 15);
        assert_eq!(reply.calls[0].id, "c1");
        assert_eq!(reply.calls[0].arguments.as_ref().unwrap()["text"], "Go");
        assert_eq!(reply.calls[1].id, "call_3_1");
        assert_eq!(reply.calls[1].echo, "{\"dy\":5}");
        assert!(
            reply.calls[2]
                .arguments
                .as_ref()
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert_eq!(reply.calls[2].echo, "{}");

        let no_usage = json!({"choices": [{"message": {"content": "hi"}}]});
        assert_eq!(
            parse_reply(no_usage.to_string().as_bytes(), 99, 1)
                .unwrap()
                .tokens,
            99
        );
        assert_eq!(
            parse_reply(b"<html>", 0, 1).unwrap_err(),
            "the model's answer is not valid JSON"
        );
        assert_eq!(
            parse_reply(b"{\"error\": 1}", 0, 1).unwrap_err(),
            "the model's answer is not valid: no choices"
        );
    }
}
