// Landing page: asks the server how it runs and shows either the free-mode
// start form or the note that sessions come from the operator.

async function loadInfo() {
  const res = await fetch('/api/info', { headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(`GET /api/info answered ${res.status}`);
  return res.json();
}

function show(id) {
  document.getElementById(id).hidden = false;
}

async function main() {
  try {
    const info = await loadInfo();
    show(info.free_mode === true ? 'free-mode' : 'operator-mode');
    if (info.name && info.version) {
      document.getElementById('version').textContent = `${info.name} ${info.version}`;
    }
  } catch (err) {
    console.warn('[livesession] could not load server info:', err);
    const el = document.getElementById('info-error');
    el.textContent = 'Could not reach the server. Reload the page to try again.';
    el.hidden = false;
  } finally {
    document.getElementById('loading').hidden = true;
  }
}

// Disable the button once pressed: a second click would start a second session.
document.querySelector('#free-mode form').addEventListener('submit', (ev) => {
  ev.submitter?.setAttribute('disabled', '');
});

main();

// Coming back with the Back button restores the page from the cache with the
// button still disabled.
window.addEventListener('pageshow', () => {
  document.querySelector('#free-mode button')?.removeAttribute('disabled');
});
