//! Steps run in a real headless Chromium against pages served on loopback.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::response::Html;
use axum::routing::get;
use livesession_tasks::cdp::{Cdp, Page};
use livesession_tasks::model::{Target, WaitUntil};
use livesession_tasks::steps::{StepSettings, StepsError, run_step, run_steps};
use livesession_tasks::{EventNote, RunContext, Step, Stopped};
use serde_json::{Value, json};
use support::{Chromium, launch_chromium, serve};
use tokio_util::sync::CancellationToken;

/// Records what the run reports; the agent always has control; stops when told.
#[derive(Default)]
struct TestContext {
    notes: Mutex<Vec<EventNote>>,
    stop: CancellationToken,
}

#[async_trait::async_trait]
impl RunContext for TestContext {
    async fn report(&self, note: EventNote) -> Result<(), Stopped> {
        self.notes.lock().unwrap().push(note);
        Ok(())
    }
    async fn wait_for_control(&self) -> Result<(), Stopped> {
        Ok(())
    }
    async fn ask_person(&self, _reason: &str) -> Result<(), Stopped> {
        Ok(())
    }
    async fn stopped(&self) -> Stopped {
        self.stop.cancelled().await;
        Stopped::Cancelled("stopped by the test".into())
    }
}

async fn open_page(chromium: &Chromium) -> Page {
    let cdp = Cdp::connect_url(&chromium.ws_url)
        .await
        .expect("connect to Chromium");
    Page::attach(&cdp).await.expect("attach to the blank tab")
}

fn steps(value: Value) -> Vec<Step> {
    match livesession_tasks::TaskInput::parse(&json!({"kind": "steps", "steps": value})).unwrap() {
        livesession_tasks::TaskInput::Steps(steps) => steps,
        other => panic!("not steps: {other:?}"),
    }
}

/// The width and height in a JPEG's start-of-frame header.
fn jpeg_size(jpeg: &[u8]) -> (u32, u32) {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "not a JPEG");
    let mut at = 2;
    while at + 9 < jpeg.len() {
        assert_eq!(jpeg[at], 0xFF, "JPEG segment expected");
        let marker = jpeg[at + 1];
        let length = u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
        if (0xC0..=0xC2).contains(&marker) {
            let height = u16::from_be_bytes([jpeg[at + 5], jpeg[at + 6]]) as u32;
            let width = u16::from_be_bytes([jpeg[at + 7], jpeg[at + 8]]) as u32;
            return (width, height);
        }
        at += 2 + length;
    }
    panic!("no start of frame in the JPEG");
}

const SETTINGS: StepSettings = StepSettings {
    step_timeout: Duration::from_secs(30),
};
const SHORT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_full_run_fills_the_form_and_reports_every_step() {
    let chromium = launch_chromium().await;
    let site = serve(support::demo_site()).await;
    let page = open_page(&chromium).await;
    let ctx = TestContext::default();
    let steps = steps(json!([
        {"action": "goto", "url": site.url("/form")},
        {"action": "scroll", "dy": 400},
        {"action": "type", "selector": "#name", "text": "Ada"},
        {"action": "click", "text": "Submit"},
        {"action": "wait_for", "url": "/submit"},
        {"action": "wait_for", "selector": "#answer", "timeout_ms": 20000},
        {"action": "extract", "selector": "#answer", "name": "answer"},
        {"action": "assert_text", "text": "Your code is 21"},
        {"action": "type", "selector": "#note", "text": "hi"},
        {"action": "press", "key": "x"},
        {"action": "press", "key": "Backspace"},
        {"action": "press", "key": "!"},
        {"action": "extract", "selector": "#note", "name": "note"},
        {"action": "screenshot"},
        {"action": "sleep", "ms": 10},
    ]));

    let result = run_steps(&page, &steps, &SETTINGS, &ctx)
        .await
        .expect("the run succeeds");

    assert_eq!(
        result["extracted"],
        json!({"answer": "Thanks, Ada! Your code is 21", "note": "hi!"})
    );
    assert_eq!(result["steps"], steps.len());
    assert_eq!(result["url"], site.url("/submit"));
    assert_eq!(result["title"], "Thanks");

    let notes = ctx.notes.lock().unwrap();
    assert_eq!(notes.len(), steps.len(), "one event per step");
    for (i, (note, step)) in notes.iter().zip(&steps).enumerate() {
        assert_eq!(note.step, Some(i as u32));
        assert_eq!(
            note.message.as_deref(),
            Some(format!("{}: {}", i + 1, step.describe()).as_str())
        );
        let image = note
            .screenshot
            .as_deref()
            .unwrap_or_else(|| panic!("step {i} has no image"));
        let (width, _) = jpeg_size(image);
        if matches!(step, Step::Screenshot) {
            assert_eq!(width, 1280, "the screenshot step keeps the full size");
        } else {
            assert!(
                (300..=340).contains(&width),
                "step {i}: a thumbnail about 320 px wide, not {width}"
            );
        }
    }
}

#[tokio::test]
async fn keys_scroll_checkbox_and_enter() {
    let chromium = launch_chromium().await;
    let site = serve(support::demo_site()).await;
    let page = open_page(&chromium).await;
    let run = |step: Step| {
        let page = &page;
        async move {
            run_step(page, &step, SETTINGS.step_timeout)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };

    run(Step::Goto {
        url: site.url("/form"),
    })
    .await;
    run(Step::Scroll { dy: 600 }).await;
    let started = Instant::now();
    while page
        .evaluate("window.scrollY")
        .await
        .unwrap()
        .as_f64()
        .unwrap()
        < 100.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the wheel did not scroll the page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    run(Step::Type {
        selector: "#name".into(),
        text: "ab".into(),
    })
    .await;
    run(Step::Press {
        key: "Backspace".into(),
    })
    .await;
    run(Step::Press { key: "c".into() }).await;
    run(Step::Press { key: "Home".into() }).await;
    run(Step::Press { key: "Z".into() }).await;
    let name = run(Step::Extract {
        selector: "#name".into(),
        name: "name".into(),
    })
    .await;
    assert_eq!(name.extracted, Some(("name".into(), json!("Zac"))));

    // A label's text clicks its checkbox; extract reads a checkbox as checked or not.
    let agree = Step::Extract {
        selector: "input[name=agree]".into(),
        name: "agree".into(),
    };
    assert_eq!(
        run(agree.clone()).await.extracted.unwrap().1,
        json!("false")
    );
    run(Step::Click {
        target: Target::Text("i agree".into()),
    })
    .await;
    assert_eq!(run(agree).await.extracted.unwrap().1, json!("true"));

    // Enter in the focused field submits the form.
    run(Step::Click {
        target: Target::Selector("#name".into()),
    })
    .await;
    run(Step::Press {
        key: "Enter".into(),
    })
    .await;
    run(Step::WaitFor {
        until: WaitUntil::Text("Thanks, Zac!".into()),
        timeout_ms: Some(20_000),
    })
    .await;
    assert!(page.url().await.unwrap().ends_with("/submit"));

    let shot = run(Step::Screenshot).await.screenshot.expect("an image");
    let (width, height) = page.viewport().await.unwrap();
    assert_eq!(
        jpeg_size(&shot),
        (width as u32, height as u32),
        "the whole viewport"
    );
}

#[tokio::test]
async fn a_click_that_finds_nothing_names_the_step_and_selector() {
    let chromium = launch_chromium().await;
    let site = serve(support::demo_site()).await;
    let page = open_page(&chromium).await;
    let settings = StepSettings {
        step_timeout: SHORT,
    };

    let ctx = TestContext::default();
    let run = steps(json!([
        {"action": "goto", "url": site.url("/form")},
        {"action": "click", "selector": "#go"},
        {"action": "screenshot"},
    ]));
    let started = Instant::now();
    let error = run_steps(&page, &run, &settings, &ctx).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        error,
        StepsError::Failed {
            index: 1,
            step: "click \"#go\"".into(),
            reason: "no element matches \"#go\" within 3 s".into(),
        }
    );
    assert_eq!(
        error.to_string(),
        "step 2 (click \"#go\"): no element matches \"#go\" within 3 s"
    );
    // The failed step is reported too, with the page as it was; nothing after it runs.
    {
        let notes = ctx.notes.lock().unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[1].step, Some(1));
        let message = notes[1].message.as_deref().unwrap();
        assert!(
            message.starts_with("2 failed: click \"#go\": no element"),
            "{message}"
        );
        assert_eq!(&notes[1].screenshot.as_deref().unwrap()[..2], &[0xFF, 0xD8]);
    }

    let by_text = Step::Click {
        target: Target::Text("Sign in".into()),
    };
    assert_eq!(
        run_step(&page, &by_text, SHORT).await.unwrap_err(),
        "no visible element with text \"Sign in\" within 3 s"
    );
    // An element that is there but never visible is told apart from none at all.
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p id=ghost hidden>boo</p>')")
        .await
        .unwrap();
    let ghost = Step::WaitFor {
        until: WaitUntil::Selector("#ghost".into()),
        timeout_ms: Some(1500),
    };
    assert_eq!(
        run_step(&page, &ghost, SETTINGS.step_timeout)
            .await
            .unwrap_err(),
        "\"#ghost\" matches no visible element within 1.5 s"
    );
    let absent = Step::AssertText {
        text: "Welcome back".into(),
    };
    assert_eq!(
        run_step(&page, &absent, Duration::from_millis(500))
            .await
            .unwrap_err(),
        "the page does not show \"Welcome back\""
    );
}

#[tokio::test]
async fn goto_a_closed_port_fails_naming_the_url() {
    let chromium = launch_chromium().await;
    let page = open_page(&chromium).await;
    let url = support::closed_port_url();
    let ctx = TestContext::default();
    let error = run_steps(
        &page,
        &steps(json!([{"action": "goto", "url": url}])),
        &SETTINGS,
        &ctx,
    )
    .await
    .unwrap_err();
    let StepsError::Failed { index, reason, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(*index, 0);
    assert_eq!(
        reason,
        &format!("could not load {url}: net::ERR_CONNECTION_REFUSED")
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("step 1 (goto {url}): could not load"))
    );
}

#[tokio::test]
async fn stopping_ends_the_run_at_once() {
    let chromium = launch_chromium().await;
    let site = serve(support::demo_site()).await;
    let page = open_page(&chromium).await;
    let ctx = TestContext::default();
    let run = steps(json!([
        {"action": "goto", "url": site.url("/blank")},
        {"action": "wait_for", "selector": "#never", "timeout_ms": 120000},
        {"action": "screenshot"},
    ]));
    let stop = ctx.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
    });
    let started = Instant::now();
    let error = run_steps(&page, &run, &SETTINGS, &ctx).await.unwrap_err();
    assert_eq!(
        error,
        StepsError::Stopped(Stopped::Cancelled("stopped by the test".into()))
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        ctx.notes.lock().unwrap().len(),
        1,
        "only the goto was reported"
    );

    // The browser is still usable afterwards: the page was left open.
    assert_eq!(page.title().await.unwrap(), "Blank");
}

/// Selectors and texts reach the page's script as JSON literals: quotes, `</script>`
/// and code in them are only characters to look for.
#[tokio::test]
async fn selectors_and_texts_cannot_inject_script() {
    let chromium = launch_chromium().await;
    let site =
        serve(axum::Router::new().route("/tricky", get(|| async { Html(TRICKY_PAGE) }))).await;
    let page = open_page(&chromium).await;
    run_step(
        &page,
        &Step::Goto {
            url: site.url("/tricky"),
        },
        SETTINGS.step_timeout,
    )
    .await
    .unwrap();
    let pwned = || async { page.evaluate("typeof window.pwned").await.unwrap() };

    // Valid CSS, matching nothing.
    let selector = r#"[title='"); window.pwned = 1; ("</script>']"#;
    let err = run_step(
        &page,
        &Step::Click {
            target: Target::Selector(selector.into()),
        },
        SHORT,
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("no element matches"), "{err}");
    // Not CSS at all: said at once.
    let selector = r#""); window.pwned = 1; ("`${window.pwned = 1}`"#;
    let err = run_step(
        &page,
        &Step::Extract {
            selector: selector.into(),
            name: "x".into(),
        },
        SHORT,
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("invalid selector"), "{err}");
    let text = r#"'); window.pwned = 1; //</script><script>window.pwned = 1</script>"#;
    let err = run_step(
        &page,
        &Step::Click {
            target: Target::Text(text.into()),
        },
        SHORT,
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("no visible element with text"), "{err}");
    let err = run_step(&page, &Step::AssertText { text: text.into() }, SHORT)
        .await
        .unwrap_err();
    assert!(err.starts_with("the page does not show"), "{err}");
    assert_eq!(pwned().await, "undefined");

    // The same characters are matched literally where the page has them.
    let selector = r#"[data-x='"); window.pwned = 1; ("</script>']"#;
    run_step(
        &page,
        &Step::Click {
            target: Target::Selector(selector.into()),
        },
        SHORT,
    )
    .await
    .unwrap();
    assert_eq!(page.title().await.unwrap(), "clicked 1");
    let text = r#"It's "quoted" </script>"#;
    run_step(
        &page,
        &Step::Click {
            target: Target::Text(text.into()),
        },
        SHORT,
    )
    .await
    .unwrap();
    assert_eq!(page.title().await.unwrap(), "clicked 2");
    assert_eq!(pwned().await, "undefined");
}

const TRICKY_PAGE: &str = r#"<!doctype html><title>Tricky</title>
<button data-x="&quot;); window.pwned = 1; (&quot;&lt;/script&gt;"
  onclick="window.clicks = (window.clicks || 0) + 1; document.title = 'clicked ' + window.clicks"
>It's "quoted" &lt;/script&gt;</button>"#;
