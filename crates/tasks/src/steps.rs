//! Runs the steps of a `steps` task in a [`Page`], one event per step.
//!
//! Each step finds what it needs by polling the page (every 100 ms) until it is there or
//! the step's time is up, then acts through real input (`Input.*`), as a person would.
//! Selectors and texts reach the page's JavaScript only as JSON literals.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::cdp::{CdpError, Page};
use crate::model::{EventNote, Step, Target, WaitUntil, limits};
use crate::runner::{RunContext, Stopped};

/// How often a step looks again for what it waits for.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct StepSettings {
    /// How long one step may take (`wait_for.timeout_ms` overrides it for that step).
    pub step_timeout: Duration,
}

impl Default for StepSettings {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepsError {
    #[error("{0}")]
    Stopped(Stopped),
    /// `index` counts from 0 (`steps[index]` of the input); people read it from 1.
    #[error("step {} ({}): {}", .index + 1, .step, .reason)]
    Failed {
        index: usize,
        step: String,
        reason: String,
    },
}

/// What a step gives back besides having happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// `extract`: the name and the value.
    pub extracted: Option<(String, Value)>,
    /// `screenshot`: a full-size JPEG.
    pub screenshot: Option<Vec<u8>>,
}

/// Runs `steps` in `page`. Before each step it waits until the agent may drive
/// ([`RunContext::wait_for_control`]); after each it reports one event: the step's index,
/// `"<n>: <step>"` (n from 1) and a thumbnail of the page (the `screenshot` step's full-size
/// image instead). A failed step is reported the same way (`"<n> failed: <reason>"`, with a
/// thumbnail of the page as it was) and ends the run. Returns as soon as
/// [`RunContext::stopped`] resolves.
///
/// The result: `{"extracted": {name: value, ...}, "steps": n, "url": ..., "title": ...}`.
pub async fn run_steps(
    page: &Page,
    steps: &[Step],
    settings: &StepSettings,
    ctx: &dyn RunContext,
) -> Result<Value, StepsError> {
    let run = async {
        let mut extracted = Map::new();
        // Extracted values share the result's size limit, with room for the rest.
        let mut budget = limits::MAX_RESULT_BYTES - 8 * 1024;
        for (index, step) in steps.iter().enumerate() {
            ctx.wait_for_control().await.map_err(StepsError::Stopped)?;
            match run_step(page, step, settings.step_timeout).await {
                Ok(output) => {
                    let screenshot = match output.screenshot {
                        Some(image) => Some(image),
                        None => page.thumbnail().await.ok(),
                    };
                    if let Some((name, value)) = output.extracted {
                        let value = within_budget(value, &mut budget);
                        extracted.insert(name, value);
                    }
                    let note = EventNote {
                        step: Some(index as u32),
                        message: Some(format!("{}: {}", index + 1, step.describe())),
                        screenshot,
                    };
                    ctx.report(note).await.map_err(StepsError::Stopped)?;
                }
                Err(reason) => {
                    let note = EventNote {
                        step: Some(index as u32),
                        message: Some(clip(
                            &format!("{} failed: {}: {reason}", index + 1, step.describe()),
                            limits::MAX_MESSAGE_CHARS,
                        )),
                        screenshot: page.thumbnail().await.ok(),
                    };
                    ctx.report(note).await.map_err(StepsError::Stopped)?;
                    return Err(StepsError::Failed {
                        index,
                        step: step.describe(),
                        reason,
                    });
                }
            }
        }
        let url = page.url().await.map(Value::String).unwrap_or(Value::Null);
        let title = page.title().await.map(Value::String).unwrap_or(Value::Null);
        Ok(json!({"extracted": extracted, "steps": steps.len(), "url": url, "title": title}))
    };
    tokio::select! {
        stopped = ctx.stopped() => Err(StepsError::Stopped(stopped)),
        outcome = run => outcome,
    }
}

/// Runs one step, within `timeout` (`wait_for.timeout_ms` takes its place; `sleep` takes
/// its own time). The error is the reason, for people: `no element matches "#go" within 30 s`.
pub async fn run_step(page: &Page, step: &Step, timeout: Duration) -> Result<StepOutput, String> {
    let timeout = match step {
        Step::WaitFor {
            timeout_ms: Some(ms),
            ..
        } => Duration::from_millis(*ms),
        _ => timeout,
    };
    let deadline = Instant::now() + timeout;
    // Every wait inside ends by the deadline; this is for a browser that stops answering.
    let limit = match step {
        Step::Sleep { ms } => Duration::from_millis(*ms),
        _ => timeout,
    } + Duration::from_secs(5);
    match tokio::time::timeout(limit, step_inner(page, step, timeout, deadline)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "the browser did not finish within {}",
            human_duration(timeout)
        )),
    }
}

async fn step_inner(
    page: &Page,
    step: &Step,
    timeout: Duration,
    deadline: Instant,
) -> Result<StepOutput, String> {
    let fail = |e: CdpError| e.to_string();
    let within = human_duration(timeout);
    let mut output = StepOutput::default();
    match step {
        Step::Goto { url } => page.navigate(url, timeout).await.map_err(fail)?,
        Step::Click { target } => {
            let query = match target {
                Target::Selector(s) => json!({"selector": s, "act": "point"}),
                Target::Text(t) => json!({"text": t, "act": "point"}),
            };
            let found = locate(page, &query, deadline, timeout).await?;
            let (x, y) = point(&found)?;
            let events = page.cdp().subscribe();
            page.click(x, y).await.map_err(fail)?;
            page.settle(events, deadline).await;
        }
        Step::Type { selector, text } => {
            let found = locate(
                page,
                &json!({"selector": selector, "act": "point"}),
                deadline,
                timeout,
            )
            .await?;
            let (x, y) = point(&found)?;
            page.click(x, y).await.map_err(fail)?;
            // A click may not focus (a label elsewhere, a page that moves focus): focus it
            // and put the caret at the end, so the text is added after what is there.
            let focus = format!(
                "({LOCATE})({})",
                json!({"selector": selector, "act": "focus"})
            );
            page.evaluate(&focus).await.map_err(fail)?;
            page.insert_text(text).await.map_err(fail)?;
        }
        Step::Press { key } => {
            let events = page.cdp().subscribe();
            page.press_key(key).await.map_err(fail)?;
            page.settle(events, deadline).await;
        }
        Step::WaitFor { until, .. } => match until {
            WaitUntil::Selector(s) => {
                locate(
                    page,
                    &json!({"selector": s, "act": "visible"}),
                    deadline,
                    timeout,
                )
                .await?;
            }
            WaitUntil::Text(t) => {
                if !poll_text(page, t, deadline).await? {
                    return Err(format!(
                        "the page did not show {} within {within}",
                        quote(t)
                    ));
                }
            }
            WaitUntil::Url(part) => {
                let wanted = serde_json::to_string(part).expect("a string serializes");
                let expression = format!("location.href.includes({wanted})");
                let mut last_url = String::new();
                loop {
                    match page.evaluate(&expression).await {
                        Ok(Value::Bool(true)) => break,
                        Err(CdpError::Closed) => return Err(CdpError::Closed.to_string()),
                        _ => {}
                    }
                    if let Ok(url) = page.url().await {
                        last_url = url;
                    }
                    if Instant::now() + POLL > deadline {
                        return Err(format!(
                            "the URL did not contain {} within {within} (it is {})",
                            quote(part),
                            quote(&last_url)
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        },
        Step::Extract { selector, name } => {
            let found = locate(
                page,
                &json!({"selector": selector, "act": "read"}),
                deadline,
                timeout,
            )
            .await?;
            let value = found
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default();
            output.extracted = Some((name.clone(), Value::String(value.to_owned())));
        }
        Step::Screenshot => output.screenshot = Some(page.screenshot().await.map_err(fail)?),
        Step::Scroll { dy } => {
            let (width, height) = page.viewport().await.map_err(fail)?;
            page.wheel(width / 2.0, height / 2.0, *dy as f64)
                .await
                .map_err(fail)?;
        }
        Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis(*ms)).await,
        Step::AssertText { text } => {
            if !poll_text(page, text, deadline).await? {
                return Err(format!("the page does not show {}", quote(text)));
            }
        }
    }
    Ok(output)
}

/// Looks for an element until found or `deadline`. `query` is `{"selector"|"text": ...,
/// "act": "point"|"visible"|"read"|"focus"}` (see [`LOCATE`]); returns its answer.
async fn locate(
    page: &Page,
    query: &Value,
    deadline: Instant,
    timeout: Duration,
) -> Result<Value, String> {
    let expression = format!("({LOCATE})({query})");
    // The page's last answer, or the last error while it has given none.
    let mut last: Result<Value, Option<CdpError>> = Err(None);
    loop {
        match page.evaluate(&expression).await {
            Ok(answer) => match answer["state"].as_str() {
                Some("ok") => return Ok(answer),
                Some("invalid") => {
                    let selector = query["selector"].as_str().unwrap_or_default();
                    let message = clip(answer["message"].as_str().unwrap_or_default(), 200);
                    return Err(format!("invalid selector {}: {message}", quote(selector)));
                }
                _ => last = Ok(answer),
            },
            Err(CdpError::Closed) => return Err(CdpError::Closed.to_string()),
            // The page is navigating (its context is gone) or busy: look again.
            Err(e) => {
                if last.is_err() {
                    last = Err(Some(e));
                }
            }
        }
        if Instant::now() + POLL > deadline {
            return Err(match last {
                Ok(answer) => not_found(query, &answer, timeout),
                // Not one answer: say why.
                Err(Some(e)) => format!("could not look into the page: {e}"),
                Err(None) => not_found(query, &Value::Null, timeout),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why [`locate`] gave up, from the last answer.
fn not_found(query: &Value, last: &Value, waited: Duration) -> String {
    let within = human_duration(waited);
    if let Some(text) = query["text"].as_str() {
        return format!(
            "no visible element with text {} within {within}",
            quote(text)
        );
    }
    let selector = quote(query["selector"].as_str().unwrap_or_default());
    match last["state"].as_str() {
        Some("hidden") => format!("{selector} matches no visible element within {within}"),
        Some("covered") => format!(
            "the element {selector} stayed covered by {} for {within}",
            last["by"].as_str().unwrap_or("another element")
        ),
        _ => format!("no element matches {selector} within {within}"),
    }
}

fn point(found: &Value) -> Result<(f64, f64), String> {
    match (found["x"].as_f64(), found["y"].as_f64()) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err("the page gave no position for the element".into()),
    }
}

/// Polls until the page's visible text contains `text`; false when `deadline` passes.
async fn poll_text(page: &Page, text: &str, deadline: Instant) -> Result<bool, String> {
    let wanted = serde_json::to_string(text).expect("a string serializes");
    let expression = format!(
        "(() => {{ const b = document.body; return !!b && b.innerText.includes({wanted}); }})()"
    );
    loop {
        match page.evaluate(&expression).await {
            Ok(Value::Bool(true)) => return Ok(true),
            Err(CdpError::Closed) => return Err(CdpError::Closed.to_string()),
            _ => {}
        }
        if Instant::now() + POLL > deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Finds an element in the page. Called as `(LOCATE)(query)` with `query` a JSON object:
/// `selector` (CSS) or `text` (visible text, an input button's value or an `aria-label`:
/// the same text first, then containing it in any case; links, buttons and labels before
/// other elements, then the smallest), and `act`:
/// - `visible`: a visible element is there;
/// - `point`: also scrolled into view and not covered: `{x, y}` is the middle of its visible part;
/// - `read`: any element (visible or not), `value` is its text or an input's value;
/// - `focus`: focuses the first visible one and puts the caret at its end.
///
/// Answers `{state: "ok", ...}`, `"none"`, `"hidden"`, `"covered"` (with `by`), or
/// `"invalid"` (with `message`) for a selector the browser does not accept.
const LOCATE: &str = r#"function (q) {
  const norm = (s) => String(s == null ? '' : s).replace(/\s+/g, ' ').trim();
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.visibility !== 'collapse';
  };
  const name = (el) => {
    let s = '<' + el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    if (typeof el.className === 'string' && el.className.trim()) {
      s += '.' + el.className.trim().split(/\s+/).join('.');
    }
    return s.slice(0, 80) + '>';
  };
  const byText = (text) => {
    const want = norm(text), lower = want.toLowerCase();
    const clickable = 'a, button, input[type=submit], input[type=button], input[type=reset], '
      + '[role=button], [role=link], label, summary';
    const skip = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'HEAD', 'TITLE']);
    const found = [];
    for (const el of document.querySelectorAll('body, body *')) {
      if (skip.has(el.tagName)) continue;
      const labels = [];
      const all = norm(el.textContent).toLowerCase();
      if (all.includes(lower)) labels.push(norm(el.innerText === undefined ? el.textContent : el.innerText));
      if (el instanceof HTMLInputElement && ['submit', 'button', 'reset'].includes(el.type)) {
        labels.push(norm(el.value));
      }
      if (el.hasAttribute('aria-label')) labels.push(norm(el.getAttribute('aria-label')));
      let rank = 3;
      for (const l of labels) {
        if (l === want) rank = Math.min(rank, 0);
        else if (l.toLowerCase() === lower) rank = Math.min(rank, 1);
        else if (l.toLowerCase().includes(lower)) rank = Math.min(rank, 2);
      }
      if (rank === 3) continue;
      const r = el.getBoundingClientRect();
      found.push({el, rank, click: el.matches(clickable) ? 0 : 1, area: r.width * r.height});
    }
    found.sort((a, b) => a.rank - b.rank || a.click - b.click || a.area - b.area);
    return found.map((f) => f.el);
  };
  let els;
  if (q.text !== undefined) {
    els = byText(q.text);
  } else {
    try {
      els = Array.from(document.querySelectorAll(q.selector));
    } catch (e) {
      return {state: 'invalid', message: String(e && e.message || e)};
    }
  }
  if (els.length === 0) return {state: 'none'};
  if (q.act === 'read') {
    const el = els[0];
    let value;
    if (el instanceof HTMLInputElement && (el.type === 'checkbox' || el.type === 'radio')) {
      value = String(el.checked);
    } else if (el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement
               || el instanceof HTMLSelectElement) {
      value = el.value;
    } else {
      value = String(el.innerText === undefined ? el.textContent : el.innerText).trim();
    }
    return {state: 'ok', value};
  }
  const el = els.find(visible);
  if (!el) return {state: 'hidden'};
  if (q.act === 'visible') return {state: 'ok'};
  if (q.act === 'focus') {
    const active = document.activeElement;
    if (active !== el && !el.contains(active)) el.focus();
    try {
      if (typeof el.value === 'string' && el.setSelectionRange) {
        el.setSelectionRange(el.value.length, el.value.length);
      }
    } catch (e) { /* types without a caret (email, number) */ }
    return {state: 'ok'};
  }
  el.scrollIntoView({block: 'center', inline: 'center', behavior: 'instant'});
  const r = el.getBoundingClientRect();
  const left = Math.max(r.left, 0), right = Math.min(r.right, window.innerWidth);
  const top = Math.max(r.top, 0), bottom = Math.min(r.bottom, window.innerHeight);
  if (right - left < 1 || bottom - top < 1) return {state: 'hidden'};
  const x = (left + right) / 2, y = (top + bottom) / 2;
  const hit = document.elementFromPoint(x, y);
  if (hit && hit !== el && !el.contains(hit)) return {state: 'covered', by: name(hit)};
  return {state: 'ok', x, y};
}"#;

/// `"text"` as people (and Rust) quote it, shortened to 80 characters.
fn quote(s: &str) -> String {
    format!("{:?}", clip(s, 80))
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Keeps an extracted string within what is left of the result's size.
fn within_budget(value: Value, budget: &mut usize) -> Value {
    let Value::String(s) = value else {
        return value;
    };
    if s.len() <= *budget {
        *budget -= s.len();
        return Value::String(s);
    }
    let mut end = *budget;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    *budget = 0;
    Value::String(format!("{}…", &s[..end]))
}

/// `30 s`, `1.5 s`, `250 ms`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
    }

    #[test]
    fn failures_name_the_step_from_one() {
        let e = StepsError::Failed {
            index: 2,
            step: Step::Click {
                target: Target::Selector("#go".into()),
            }
            .describe(),
            reason: "no element matches \"#go\" within 30 s".into(),
        };
        assert_eq!(
            e.to_string(),
            "step 3 (click \"#go\"): no element matches \"#go\" within 30 s"
        );
    }

    #[test]
    fn extracted_values_share_a_budget() {
        let mut budget = 5;
        assert_eq!(within_budget(json!("abc"), &mut budget), json!("abc"));
        assert_eq!(within_budget(json!("défg"), &mut budget), json!("d…"));
        assert_eq!(within_budget(json!("x"), &mut budget), json!("…"));
    }
}
