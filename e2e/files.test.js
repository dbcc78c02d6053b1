// End to end: a session's files (docs/api.md, "Session files") between the
// real desktop and the real viewer's Files panel (web/static/files-panel.js).
//
// - A page in the session's Chromium (served by this test) is clicked by an
//   agent (Puppeteer over the gateway's CDP) on a download link: Chromium
//   saves it without a prompt into its Downloads folder, the server hands it
//   to the session's files and announces FILE_ADDED, the viewer's panel lists
//   it live, and its link downloads the very bytes the page served.
// - A file uploaded through the panel's file input lands in the desktop's
//   Downloads folder: the agent sets it on the remote page's
//   <input type=file> (DOM.setFileInputFiles, /home/desktop/Downloads/<name>)
//   and the page reads the same bytes with a FileReader. A file dropped on
//   the viewer is uploaded the same way.
// - A slow upload (the viewer's uplink throttled) shows its progress.
// - Refusals say why in the server's words: a name the session has (409), a
//   name starting with '.' (400) and a file over 100 MiB (checked before
//   sending, same words as the server's 413) through the panel; a traversal
//   name (400) and an oversized declared body (413) at the API.
// - A view-only viewer lists and downloads, but has no upload and cannot upload.

import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import puppeteer from 'puppeteer-core';

import {
  assertLoopback,
  launchBrowser,
  listenOnLoopback,
  recordConsole,
  startServer,
  waitFor,
  watchConsoleProblems,
  withDiagnostics,
} from './helpers.js';

const MAX_FILE_BYTES = 100 * 1024 * 1024;

/** Every byte value, then text: what the remote page offers for download. */
const REPORT = Buffer.concat([
  Buffer.from('id,value\n1,été\n2,"quoted, with comma"\n', 'utf8'),
  Buffer.from(Array.from({ length: 256 * 40 }, (_, i) => i % 256)),
]);
/** What the person uploads. */
const UPLOAD = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7 + 3) % 256));

/**
 * The page the session's Chromium opens: a download link (an attachment
 * response) and a file input whose file the page reads back into
 * `window.__picked` ({name, size, base64}).
 */
function startFilesPageServer() {
  const state = { downloads: 0 };
  const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>livesession e2e files page</title>
<style>html, body { margin: 0; height: 100%; background: rgb(0, 140, 90); } a, input { display: block; margin: 40px; font: 32px sans-serif; color: #fff; }</style>
</head><body>
<a id="dl" href="/download/report.csv">Download the report</a>
<input id="picker" type="file">
<script>
  window.__picked = null;
  document.getElementById('picker').addEventListener('change', (ev) => {
    const file = ev.target.files[0];
    const reader = new FileReader();
    reader.onload = () => {
      const bytes = new Uint8Array(reader.result);
      let bin = '';
      for (const b of bytes) bin += String.fromCharCode(b);
      window.__picked = { name: file.name, size: file.size, base64: btoa(bin) };
    };
    reader.onerror = () => { window.__picked = { error: String(reader.error) }; };
    reader.readAsArrayBuffer(file);
  });
</script></body></html>
`;
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/files.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(page);
    } else if (url.pathname === '/download/report.csv') {
      state.downloads += 1;
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-disposition': 'attachment; filename="report.csv"',
        'content-length': String(REPORT.length),
        'cache-control': 'no-store',
      });
      res.end(REPORT);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return listenOnLoopback(srv, '/files.html', state);
}

/** What an error answer says. */
async function errorOf(res) {
  const body = await res.json();
  return { status: res.status, code: body?.error?.code, message: body?.error?.message };
}

describe('session files', { timeout: 600_000 }, () => {
  let pages;
  let server;
  let browser; // the person's local Chromium, showing the real viewer
  let session;
  let viewer; // { page, diagnostics, problems }
  let agent; // Puppeteer, connected to the session's Chromium
  let remote; // the session's page, as the agent drives it
  let tmp;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'livesession-e2e-files-'));
    pages = await startFilesPageServer();
    server = await startServer({ startUrl: pages.url });
    browser = await launchBrowser();
    const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    const text = await res.text();
    assert.equal(res.status, 201, `POST /api/sessions: ${text}`);
    session = JSON.parse(text);
  });

  after(async () => {
    // disconnect, never close(): close() would end the session's browser.
    await agent?.disconnect().catch(() => {});
    await browser?.close();
    await server?.stop();
    await pages?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** The real viewer opened with a token link; waits until the screen is live. */
  async function openViewer(token) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    const page = await context.newPage();
    const problems = watchConsoleProblems(page);
    const consoleTail = recordConsole(page);
    const viewerUrl = new URL(session.viewer_url, server.baseUrl).href;
    assertLoopback(viewerUrl);
    await page.goto(`${viewerUrl}#token=${token}`);
    await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 120_000, polling: 200 });
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-files-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const panel = await page
        .evaluate(() => ({ ...document.body.dataset, files: document.getElementById('files')?.innerText, toggle: document.getElementById('files-toggle')?.textContent }))
        .catch(() => null);
      return `[e2e] viewer: ${JSON.stringify(panel)}\n[e2e] page downloads served: ${pages.state.downloads}\n[e2e] screenshot: ${shot}\n[e2e] ---- viewer console (tail) ----\n${consoleTail()}`;
    };
    return { context, page, problems, diagnostics };
  }

  /** The agent's page on the session's Chromium, showing the files page. */
  async function remotePage() {
    if (remote) return remote;
    agent = await puppeteer.connect({
      browserWSEndpoint: `ws://127.0.0.1:${server.port}/api/sessions/${session.id}/cdp?token=${encodeURIComponent(session.token)}`,
      defaultViewport: null,
      protocolTimeout: 60_000,
    });
    const existing = (await agent.pages()).filter((p) => p.url().startsWith(pages.url));
    remote = existing[0] ?? (await agent.newPage());
    if (!remote.url().startsWith(pages.url)) await remote.goto(pages.url, { timeout: 30_000 });
    await remote.waitForSelector('#dl', { timeout: 30_000 });
    return remote;
  }

  const fileRow = (page, name) => page.locator(`#files-list li[data-name="${name}"]`);

  test("a page's download reaches the viewer's panel and its link fetches the same bytes", async () => {
    viewer = await openViewer(session.refresh_token ?? session.token);
    const { page } = viewer;
    await withDiagnostics(
      server,
      async () => {
        // Listed on CONNECTED: nothing yet.
        await page.waitForFunction(() => document.body.dataset.files === '0', null, { timeout: 10_000 });
        const page2 = await remotePage();
        await page2.click('#dl');
        // FILE_ADDED reaches the panel while it is closed: the bar's button says so.
        await fileRow(page, 'report.csv').waitFor({ state: 'attached', timeout: 60_000 });
        assert.equal(pages.state.downloads, 1, 'the page served the download once');
        const toggle = page.locator('#files-toggle');
        assert.equal(await toggle.getAttribute('data-unseen'), '1');
        assert.match(await toggle.textContent(), /1 \(1 new\)/);
        assert.equal(await page.locator('#files').isHidden(), true, 'the panel stays closed until asked');

        await toggle.click();
        await page.locator('#files').waitFor({ state: 'visible' });
        assert.equal(await toggle.getAttribute('data-unseen'), '0', 'opening the panel marks the files seen');
        const link = fileRow(page, 'report.csv').locator('a.files-link');
        assert.equal(await link.getAttribute('href'), `/api/sessions/${session.id}/files/report.csv`);
        assert.match(await fileRow(page, 'report.csv').locator('.files-meta').textContent(), /^10\.\d KB · /);
        const [download] = await Promise.all([page.waitForEvent('download', { timeout: 30_000 }), link.click()]);
        assert.equal(download.suggestedFilename(), 'report.csv');
        const fetched = await readFile(await download.path());
        assert.equal(fetched.length, REPORT.length, 'as many bytes as the page served');
        assert.ok(fetched.equals(REPORT), 'the same bytes the page served');

        // The server's list agrees.
        const res = await server.admin(`/api/sessions/${session.id}/files`);
        const { files } = await res.json();
        assert.deepEqual(
          files.map((f) => [f.name, f.size]),
          [['report.csv', REPORT.length]],
        );
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test("a file uploaded through the panel is read by the remote page's file input", async () => {
    const { page } = viewer;
    await withDiagnostics(
      server,
      async () => {
        await page.locator('#files-input').setInputFiles({ name: 'upload.bin', mimeType: 'application/octet-stream', buffer: UPLOAD });
        await fileRow(page, 'upload.bin').waitFor({ state: 'attached', timeout: 30_000 });
        await page.locator('li.files-upload').first().waitFor({ state: 'detached', timeout: 30_000 });
        assert.equal(await page.locator('#files .files-error').isHidden(), true, 'no error');
        assert.deepEqual(await page.locator('#files-list li').evaluateAll((lis) => lis.map((li) => li.dataset.name)), ['report.csv', 'upload.bin'], 'listed once');

        // The remote page's file chooser finds it in Downloads.
        const agentPage = await remotePage();
        const cdp = await agentPage.createCDPSession();
        const { root } = await cdp.send('DOM.getDocument', { depth: 0 });
        const { nodeId } = await cdp.send('DOM.querySelector', { nodeId: root.nodeId, selector: '#picker' });
        assert.ok(nodeId, 'the remote page has its file input');
        await cdp.send('DOM.setFileInputFiles', { nodeId, files: ['/home/desktop/Downloads/upload.bin'] });
        await cdp.detach();
        let picked = null;
        await waitFor(
          async () => {
            picked = await agentPage.evaluate(() => window.__picked);
            return picked !== null;
          },
          { timeoutMs: 20_000, what: () => 'the remote page to read the picked file' },
        );
        assert.equal(picked.error, undefined, `read: ${picked.error}`);
        assert.equal(picked.name, 'upload.bin');
        assert.equal(picked.size, UPLOAD.length);
        assert.ok(Buffer.from(picked.base64, 'base64').equals(UPLOAD), 'the remote page read the uploaded bytes');

        // Files dropped on the viewer are uploaded too.
        const dataTransfer = await page.evaluateHandle(() => {
          const dt = new DataTransfer();
          dt.items.add(new File(['dropped on the viewer'], 'dropped.txt', { type: 'text/plain' }));
          return dt;
        });
        await page.locator('#screen').dispatchEvent('dragenter', { dataTransfer });
        assert.equal(await page.locator('.files-drop').isVisible(), true, 'the drop hint shows while files are dragged over');
        await page.locator('#screen').dispatchEvent('drop', { dataTransfer });
        await fileRow(page, 'dropped.txt').waitFor({ state: 'attached', timeout: 30_000 });
        assert.equal(await page.locator('.files-drop').isHidden(), true);
        const dropped = await server.admin(`/api/sessions/${session.id}/files/dropped.txt`);
        assert.equal(dropped.status, 200);
        assert.equal(await dropped.text(), 'dropped on the viewer');
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test('a slow upload shows its progress until the server has it', async () => {
    const { page } = viewer;
    await withDiagnostics(
      server,
      async () => {
        // The viewer's uplink slowed to 128 KiB/s: 640 KiB take about 5 s.
        const cdp = await page.context().newCDPSession(page);
        await cdp.send('Network.enable');
        await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: -1, uploadThroughput: 128 * 1024 });
        try {
          const slow = Buffer.alloc(640 * 1024, 7);
          await page.locator('#files-input').setInputFiles({ name: 'slow.bin', mimeType: 'application/octet-stream', buffer: slow });
          const row = page.locator('li.files-upload[data-name="slow.bin"]');
          await row.waitFor({ state: 'attached', timeout: 10_000 });
          await page.waitForFunction(
            () => {
              const bar = document.querySelector('li.files-upload[data-name="slow.bin"] progress');
              return bar && bar.value > 0 && bar.value < 100;
            },
            null,
            { timeout: 20_000, polling: 50 },
          );
          assert.match(await row.locator('.files-upload-status').textContent(), /^\d+(\.\d)? KB of 640 KB$/);
          await fileRow(page, 'slow.bin').waitFor({ state: 'attached', timeout: 60_000 });
          assert.equal(await row.count(), 0, 'the progress row goes once the server has the file');
        } finally {
          await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
          await cdp.detach();
        }
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test('refused uploads say why: a name the session has, a dot name, a file over 100 MiB, traversal names', async () => {
    const { page } = viewer;
    await withDiagnostics(
      server,
      async () => {
        const errors = page.locator('#files .files-error p');
        // Through the panel: the server's own words.
        await page.locator('#files-input').setInputFiles({ name: 'upload.bin', mimeType: 'application/octet-stream', buffer: Buffer.from('again') });
        await errors.first().waitFor({ timeout: 30_000 });
        assert.equal(
          await errors.first().textContent(),
          'Could not upload "upload.bin": the session already has a file of this name; choose another name.',
        );
        await page.locator('#files-input').setInputFiles({ name: '.profile', mimeType: 'text/plain', buffer: Buffer.from('x') });
        await page.waitForFunction(() => /start with '\.'/.test(document.querySelector('#files .files-error')?.textContent ?? ''), null, { timeout: 30_000 });
        assert.equal(await errors.first().textContent(), 'Could not upload ".profile": the file name may not start with \'.\'.');
        // Over the limit: refused before a byte is sent, in the server's words.
        const big = path.join(tmp, 'big.bin');
        const handle = await open(big, 'w');
        await handle.truncate(MAX_FILE_BYTES + 1);
        await handle.close();
        await page.locator('#files-input').setInputFiles(big);
        await page.waitForFunction(() => /big\.bin/.test(document.querySelector('#files .files-error')?.textContent ?? ''), null, { timeout: 30_000 });
        assert.equal(await errors.first().textContent(), 'Could not upload "big.bin": the file is larger than 104857600 bytes, the most a file may have.');
        // Nothing of these was added.
        const res = await server.admin(`/api/sessions/${session.id}/files`);
        assert.deepEqual((await res.json()).files.map((f) => f.name), ['dropped.txt', 'report.csv', 'slow.bin', 'upload.bin']);
        // The console shows only the browser's own notes of the two refused requests.
        const unexpected = viewer.problems().filter((p) => !/Failed to load resource: the server responded with a status of (400|409)/.test(p));
        assert.deepEqual(unexpected, [], 'no other console error or warning');

        // At the API: traversal names and an oversized body, each with its rule.
        const post = (name, body = 'x') =>
          server.request(`/api/sessions/${session.id}/files?name=${encodeURIComponent(name)}`, {
            method: 'POST',
            headers: { Authorization: `Bearer ${session.token}` },
            body,
          });
        for (const [name, rule] of [
          ['../x', "the file name may not contain '/' or '\\'"],
          ['..', "the file name may not contain '..'"],
          ['a/../../secret', "the file name may not contain '/' or '\\'"],
          ['..\\x', "the file name may not contain '/' or '\\'"],
        ]) {
          const refused = await errorOf(await post(name));
          assert.deepEqual(refused, { status: 400, code: 'invalid_file_name', message: rule }, name);
        }
        const read = await server.request(`/api/sessions/${session.id}/files/${encodeURIComponent('../livesession.db')}`, {
          headers: { Authorization: `Bearer ${session.token}` },
        });
        assert.equal(read.status, 400, 'a traversal name is refused on download too');
        assert.equal((await errorOf(read)).code, 'invalid_file_name');
        // A declared length over the limit is refused at once (nothing of the body is needed).
        const tooLarge = await new Promise((resolve, reject) => {
          const req = http.request(`${server.baseUrl}/api/sessions/${session.id}/files?name=big.bin`, {
            method: 'POST',
            headers: { Authorization: `Bearer ${session.token}`, 'Content-Length': String(MAX_FILE_BYTES + 1) },
          });
          req.on('response', (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (c) => (text += c));
            res.on('end', () => {
              req.destroy();
              try {
                resolve({ status: res.statusCode, body: JSON.parse(text) });
              } catch (err) {
                reject(new Error(`${res.statusCode} without a JSON body: ${text} (${err.message})`));
              }
            });
          });
          req.on('error', (err) => {
            if (err.code !== 'ECONNRESET') reject(err);
          });
          req.flushHeaders();
        });
        assert.equal(tooLarge.status, 413);
        assert.deepEqual(tooLarge.body.error, {
          code: 'file_too_large',
          message: 'the file is larger than 104857600 bytes, the most a file may have',
        });
        const res2 = await server.admin(`/api/sessions/${session.id}/files`);
        assert.deepEqual((await res2.json()).files.map((f) => f.name), ['dropped.txt', 'report.csv', 'slow.bin', 'upload.bin'], 'nothing written');
      },
      viewer.diagnostics,
    );
  });

  test('a view-only viewer lists and downloads the files but cannot upload', async () => {
    const res = await server.admin(`/api/sessions/${session.id}/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"role":"view"}' });
    const minted = await res.json();
    assert.equal(res.status, 200, JSON.stringify(minted));
    const view = await openViewer(minted.refresh_token ?? minted.token);
    const { page } = view;
    try {
      await withDiagnostics(
        server,
        async () => {
          await page.waitForFunction(() => document.body.dataset.files === '4', null, { timeout: 30_000 });
          await page.locator('#files-toggle').click();
          await page.locator('#files').waitFor({ state: 'visible' });
          assert.equal(await page.locator('#files .files-upload-button').isHidden(), true, 'no Upload button');
          assert.equal(await page.locator('#files-input').isDisabled(), true, 'no file input');
          assert.match(await page.locator('#files .files-hint').textContent(), /View only/);
          const [download] = await Promise.all([
            page.waitForEvent('download', { timeout: 30_000 }),
            fileRow(page, 'upload.bin').locator('a.files-link').click(),
          ]);
          assert.ok((await readFile(await download.path())).equals(UPLOAD), 'a view-only viewer downloads the same bytes');
          // The server refuses a view token's upload anyway.
          const refused = await errorOf(
            await server.request(`/api/sessions/${session.id}/files?name=v.txt`, {
              method: 'POST',
              headers: { Authorization: `Bearer ${minted.token}` },
              body: 'v',
            }),
          );
          assert.equal(refused.status, 403);
          assert.equal(refused.code, 'role_forbidden');
          assert.deepEqual(view.problems(), [], 'the console has no error or warning');
        },
        view.diagnostics,
      );
    } finally {
      await view.context.close();
    }
  });
});
