//! A compact, bounded description of the page for the model: the elements it can act on,
//! each with a short CSS selector it can use back in `click`, `type` and `extract`, and
//! the page's visible text.
//!
//! One `Runtime.evaluate` of [`DIGEST_JS`] collects the facts (bounded in the page, so a
//! huge page does not send megabytes back); [`Digest::render`] turns them into the text the
//! model reads, at most [`MAX_DIGEST_CHARS`] characters. Password fields and card numbers
//! never have their value included, only whether they are filled.

use serde::Deserialize;

/// The digest's rendered text is at most this long (characters).
pub const MAX_DIGEST_CHARS: usize = 6000;
/// Of which the list of elements takes at most this many, the visible text the rest.
const MAX_ELEMENTS_CHARS: usize = 3600;
/// One element's line.
const MAX_LINE_CHARS: usize = 240;

/// Evaluated in the page; answers a JSON *string* (so the result comes back whole whatever
/// the DevTools client asks for) describing the page. Elements in view come first.
pub const DIGEST_JS: &str = r#"(() => {
  const MAX_ELEMENTS = 80, MAX_TEXT = 5000, MAX_FIELD = 100;
  const clip = (s, n) => {
    s = String(s == null ? '' : s).replace(/\s+/g, ' ').trim();
    return s.length > n ? s.slice(0, n - 1) + '\u2026' : s;
  };
  const unique = (sel) => {
    try { return document.querySelectorAll(sel).length === 1; } catch (e) { return false; }
  };
  const quote = (v) => '"' + v.replace(/["\\]/g, '\\$&') + '"';
  const selectorOf = (el) => {
    if (el.id && unique('#' + CSS.escape(el.id))) return '#' + CSS.escape(el.id);
    const tag = CSS.escape(el.localName);
    for (const attr of ['name', 'data-testid', 'aria-label', 'placeholder']) {
      const v = el.getAttribute(attr);
      if (v && v.length <= 60) {
        const s = tag + '[' + attr + '=' + quote(v) + ']';
        if (unique(s)) return s;
      }
    }
    const parts = [];
    for (let cur = el; cur && cur.nodeType === 1; cur = cur.parentElement) {
      if (cur !== el && cur.id && unique('#' + CSS.escape(cur.id))) {
        parts.unshift('#' + CSS.escape(cur.id));
        break;
      }
      const t = CSS.escape(cur.localName);
      if (t === 'body' || t === 'html' || !cur.parentElement) { parts.unshift(t); break; }
      let index = 0, count = 0;
      for (const sib of cur.parentElement.children) {
        if (sib.localName === cur.localName) { count++; if (sib === cur) index = count; }
      }
      parts.unshift(count > 1 ? t + ':nth-of-type(' + index + ')' : t);
    }
    return parts.join(' > ');
  };
  const labelOf = (el) => {
    const aria = el.getAttribute('aria-label');
    if (aria) return aria;
    const by = el.getAttribute('aria-labelledby');
    if (by) {
      const t = by.split(/\s+/).map((id) => document.getElementById(id))
        .filter(Boolean).map((e) => e.innerText).join(' ');
      if (t.trim()) return t;
    }
    if (el.labels && el.labels.length) {
      return Array.from(el.labels).map((l) => l.innerText).join(' ');
    }
    return el.getAttribute('title') || el.getAttribute('alt') || '';
  };
  const secret = (el) => el.localName === 'input' && (el.type === 'password' ||
    /cc-number|cc-csc/.test(el.getAttribute('autocomplete') || ''));
  const vh = window.innerHeight;
  const query = 'a[href],button,input:not([type=hidden]),select,textarea,summary,' +
    '[role=button],[role=link],[role=checkbox],[role=radio],[role=tab],[role=menuitem],' +
    '[role=option],[role=switch],[role=textbox],[role=combobox],[role=searchbox],' +
    '[contenteditable=""],[contenteditable=true],[onclick],[tabindex]:not([tabindex="-1"])';
  const found = [];
  for (const el of document.querySelectorAll(query)) {
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    found.push({ el, where: r.bottom < 0 ? 'above' : r.top > vh ? 'below' : '' });
  }
  const inView = found.filter((f) => !f.where);
  const ordered = inView.concat(found.filter((f) => f.where));
  const elements = ordered.slice(0, MAX_ELEMENTS).map(({ el, where }) => {
    const tag = el.localName;
    const e = { s: selectorOf(el), tag };
    const role = el.getAttribute('role');
    if (role) e.role = role;
    if (tag === 'input') e.type = el.type;
    let text = '';
    if (tag === 'input' && ['submit', 'button', 'reset'].includes(el.type)) text = el.value;
    else if (tag !== 'input' && tag !== 'textarea' && tag !== 'select') text = el.innerText;
    if (clip(text, 1)) e.text = clip(text, MAX_FIELD);
    const label = clip(labelOf(el), MAX_FIELD);
    if (label && label !== e.text) e.label = label;
    const ph = el.getAttribute('placeholder');
    if (ph) e.placeholder = clip(ph, MAX_FIELD);
    if (tag === 'input' && ['checkbox', 'radio'].includes(el.type)) e.checked = el.checked;
    else if (tag === 'select') {
      e.value = clip(Array.from(el.selectedOptions).map((o) => o.text).join(', '), MAX_FIELD);
      e.options = Array.from(el.options).slice(0, 12).map((o) => clip(o.text, 40));
    } else if (tag === 'input' || tag === 'textarea') {
      if (secret(el)) e.filled = el.value.length > 0;
      else if (el.value) e.value = clip(el.value, MAX_FIELD);
    }
    if (el.disabled) e.disabled = true;
    if (tag === 'a') e.href = clip(el.getAttribute('href'), MAX_FIELD);
    if (where) e.where = where;
    return e;
  });
  const lines = (document.body ? document.body.innerText : '').split('\n')
    .map((l) => l.replace(/\s+/g, ' ').trim()).filter(Boolean);
  let text = lines.join('\n');
  if (text.length > MAX_TEXT) text = text.slice(0, MAX_TEXT);
  return JSON.stringify({
    url: location.href,
    title: document.title,
    elements,
    more: Math.max(0, ordered.length - elements.length),
    frames: document.querySelectorAll('iframe,frame').length,
    text,
    scrolled: Math.round(window.scrollY),
    height: Math.round(document.documentElement.scrollHeight),
    viewport: vh,
  });
})()"#;

/// What [`DIGEST_JS`] answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Digest {
    pub url: String,
    pub title: String,
    pub elements: Vec<Element>,
    /// Elements found but not listed.
    pub more: u64,
    pub frames: u64,
    pub text: String,
    pub scrolled: i64,
    pub height: i64,
    pub viewport: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Element {
    /// A CSS selector for it, unique in the page when one was found.
    pub s: String,
    pub tag: String,
    pub role: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    pub label: Option<String>,
    pub placeholder: Option<String>,
    pub value: Option<String>,
    pub options: Option<Vec<String>>,
    pub checked: Option<bool>,
    /// For secret fields: whether they hold something (their value is never read out).
    pub filled: Option<bool>,
    pub disabled: Option<bool>,
    pub href: Option<String>,
    /// `above` or `below` the visible part of the page.
    #[serde(rename = "where")]
    pub position: Option<String>,
}

impl Digest {
    /// Reads what the page's evaluation of [`DIGEST_JS`] answered (a JSON string).
    pub fn from_value(value: &serde_json::Value) -> Result<Self, String> {
        match value {
            serde_json::Value::String(s) => {
                serde_json::from_str(s).map_err(|e| format!("the page's digest is not valid: {e}"))
            }
            // A DevTools client that parsed it already.
            serde_json::Value::Object(_) => serde_json::from_value(value.clone())
                .map_err(|e| format!("the page's digest is not valid: {e}")),
            _ => Err("the page's digest is not valid: not a string".into()),
        }
    }

    /// The text the model reads: the elements (one a line, selector first), then the
    /// visible text; at most [`MAX_DIGEST_CHARS`] characters in all.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.elements.is_empty() {
            out.push_str("No interactive elements found.\n");
        } else {
            out.push_str(
                "Interactive elements (the CSS selector first; use it as \"selector\"; \
                 (below)/(above) means scroll to reach it):\n",
            );
            let mut listed = 0;
            for element in &self.elements {
                let line = clip(&element.line(), MAX_LINE_CHARS);
                if out.chars().count() + line.chars().count() + 1 > MAX_ELEMENTS_CHARS {
                    break;
                }
                out.push_str(&line);
                out.push('\n');
                listed += 1;
            }
            let more = self.more + (self.elements.len() - listed) as u64;
            if more > 0 {
                out.push_str(&format!(
                    "({more} more not listed; scroll or use click with text)\n"
                ));
            }
        }
        if self.frames > 0 {
            out.push_str(&format!(
                "The page has {} frame(s) whose content is not listed here.\n",
                self.frames
            ));
        }
        if self.height > self.viewport && self.viewport > 0 {
            out.push_str(&format!(
                "Scrolled {} of {} pixels (the window shows {}).\n",
                self.scrolled, self.height, self.viewport
            ));
        }
        let header = "Visible text:\n";
        let used = out.chars().count() + header.chars().count();
        let room = MAX_DIGEST_CHARS.saturating_sub(used);
        if room > 20 {
            out.push_str(header);
            let text = self.text.trim();
            if text.is_empty() {
                out.push_str("(none)");
            } else {
                out.push_str(&clip(text, room));
            }
        }
        clip(&out, MAX_DIGEST_CHARS)
    }
}

impl Element {
    /// `#name — input text, label "Your name", value "Ada"`.
    fn line(&self) -> String {
        let mut what = match (
            self.role.as_deref(),
            self.tag.as_str(),
            self.kind.as_deref(),
        ) {
            (Some(role), _, _) => format!("{} ({role})", self.tag),
            (None, "a", _) => "link".to_owned(),
            (None, "input", Some(kind)) => format!("input {kind}"),
            (None, tag, _) => tag.to_owned(),
        };
        fn add(what: &mut String, name: &str, value: &str) {
            what.push_str(&format!(", {name} {value:?}"));
        }
        if let Some(text) = self.text.as_deref() {
            add(&mut what, "text", text);
        }
        if let Some(label) = self.label.as_deref() {
            add(&mut what, "label", label);
        }
        if let Some(placeholder) = self.placeholder.as_deref() {
            add(&mut what, "placeholder", placeholder);
        }
        if let Some(value) = self.value.as_deref() {
            add(&mut what, "value", value);
        }
        if let Some(options) = &self.options {
            let options: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
            what.push_str(&format!(", options [{}]", options.join(", ")));
        }
        if let Some(href) = self.href.as_deref() {
            add(&mut what, "href", href);
        }
        match self.checked {
            Some(true) => what.push_str(", checked"),
            Some(false) => what.push_str(", not checked"),
            None => {}
        }
        match self.filled {
            Some(true) => what.push_str(", filled (value hidden)"),
            Some(false) => what.push_str(", empty"),
            None => {}
        }
        if self.disabled == Some(true) {
            what.push_str(", disabled");
        }
        if let Some(position) = self.position.as_deref() {
            what.push_str(&format!(" ({position})"));
        }
        format!("{} — {what}", self.s)
    }
}

/// At most `max` characters, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_elements_then_text() {
        let answer = json!({
            "url": "http://x/form", "title": "Form",
            "elements": [
                {"s": "#name", "tag": "input", "type": "text", "label": "Your name", "value": "Ada"},
                {"s": "#pw", "tag": "input", "type": "password", "filled": true},
                {"s": "form > button", "tag": "button", "text": "Send"},
                {"s": "a[href]", "tag": "a", "text": "More", "href": "/more", "where": "below"}
            ],
            "more": 0, "frames": 1, "text": "Hello\nYour name", "scrolled": 0, "height": 2000, "viewport": 700
        })
        .to_string();
        let digest = Digest::from_value(&json!(answer)).unwrap();
        let text = digest.render();
        assert!(
            text.contains("#name — input text, label \"Your name\", value \"Ada\""),
            "{text}"
        );
        assert!(
            text.contains("#pw — input password, filled (value hidden)"),
            "{text}"
        );
        assert!(
            text.contains("form > button — button, text \"Send\""),
            "{text}"
        );
        assert!(
            text.contains("a[href] — link, text \"More\", href \"/more\" (below)"),
            "{text}"
        );
        assert!(text.contains("1 frame(s)"), "{text}");
        assert!(text.contains("Scrolled 0 of 2000 pixels"), "{text}");
        assert!(text.ends_with("Visible text:\nHello\nYour name"), "{text}");
    }

    #[test]
    fn stays_bounded_whatever_the_page() {
        let elements: Vec<_> = (0..500)
            .map(|i| json!({"s": format!("div:nth-of-type({i})"), "tag": "div", "text": "x".repeat(500)}))
            .collect();
        let digest = Digest::from_value(&json!({
            "elements": elements, "more": 1000, "text": "word ".repeat(10_000)
        }))
        .unwrap();
        let text = digest.render();
        assert!(
            text.chars().count() <= MAX_DIGEST_CHARS,
            "{}",
            text.chars().count()
        );
        assert!(text.contains("more not listed"));
        assert!(text.contains("Visible text:\nword word"));
        assert!(Digest::from_value(&json!(5)).is_err());
        assert!(Digest::from_value(&json!("not json")).is_err());
    }
}
