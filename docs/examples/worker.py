#!/usr/bin/env python3
"""An example livesession worker, standard library only (see docs/tasks.md).

It claims `steps` tasks, keeps each task's lease with heartbeats, reports one event and
completes the task with a result. It does NOT run the steps: a real worker drives the
session's browser over the claim's `cdp_url` (Playwright's connectOverCDP, Puppeteer)
and reports each step. To show which browser that would be, it asks the session's
DevTools for its version with the claim's agent token and puts the answer in the result.

    export LIVESESSION_SERVER=http://127.0.0.1:8080
    export LIVESESSION_WORKER_TOKEN=...   # livesession tasks worker-token example
    python3 docs/examples/worker.py          # claims tasks until interrupted
    python3 docs/examples/worker.py --once   # handles one task, then exits (0 if it completed it)
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

SERVER = os.environ.get("LIVESESSION_SERVER", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("LIVESESSION_WORKER_TOKEN", "")
WAIT_SECONDS = 30  # one claim's long poll (the server allows up to 50)


class ApiError(Exception):
    """An error answer: `{"error": {"code", "message"}}` with its HTTP status."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


def post(path, body, timeout=30):
    """POSTs JSON to the server as this worker; the answer's JSON, or None for 204."""
    request = urllib.request.Request(
        SERVER + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": str(e)}
        raise ApiError(e.code, error["code"], error["message"]) from None


def claim():
    """Long-polls until a steps task is ours: the task, its lease, cdp_url and a token."""
    while True:
        claimed = post("/api/workers/claim", {"kinds": ["steps"], "wait_seconds": WAIT_SECONDS},
                       timeout=WAIT_SECONDS + 15)
        if claimed is not None:  # 204: nothing came within the wait; ask again
            return claimed


class Lease:
    """The claim's lease, kept alive by a heartbeat a third of its length apart."""

    def __init__(self, claimed):
        self.task_id = claimed["task"]["id"]
        self.id = claimed["lease"]["id"]
        self.token = claimed["token"]  # an agent token of the task's session
        until = datetime.strptime(claimed["lease"]["until"][:19], "%Y-%m-%dT%H:%M:%S")
        length = until.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
        self.every = max(1.0, length.total_seconds() / 3)
        self.lost = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self):
        while not self.done.wait(self.every):
            try:
                answer = self.post("heartbeat", {})
                self.token = answer["token"]  # fresh: agent tokens live 15 minutes
            except ApiError as e:
                if e.code == "lease_lost":  # cancelled, or given to another worker
                    self.lost.set()
                    return
                print(f"worker: heartbeat: {e}", file=sys.stderr)
            except OSError as e:
                print(f"worker: heartbeat: {e}", file=sys.stderr)

    def post(self, what, body):
        """heartbeat, events, complete or fail, under this lease."""
        return post(f"/api/tasks/{self.task_id}/{what}", dict(body, lease=self.id))


def work(claimed, lease):
    """Handles one task; returns its result."""
    steps = claimed["task"]["input"]["steps"]
    # The browser this task is for: the session's DevTools, opened with the agent token.
    # (The first request to it starts the session's desktop if it is not running.)
    url = claimed["cdp_http_url"] + "/json/version?token=" + urllib.parse.quote(lease.token)
    with urllib.request.urlopen(url, timeout=90) as response:
        version = json.load(response)
    lease.post("events", {"message": f"example worker: {len(steps)} step(s) for {version['Browser']}; "
                                     "a real worker runs them over cdp_url"})
    return {
        "worker": "docs/examples/worker.py",
        "browser": version["Browser"],
        "protocol_version": version["Protocol-Version"],
        "steps_received": len(steps),
        "steps_run": 0,
    }


def handle(claimed):
    """Runs one claimed task to its end; True if it was completed."""
    lease = Lease(claimed)
    print(f"worker: claimed {lease.task_id} (attempt {claimed['task']['attempts']})", file=sys.stderr)
    try:
        try:
            lease.post("complete", {"result": work(claimed, lease)})
            print(f"worker: completed {lease.task_id}", file=sys.stderr)
            return True
        except ApiError as e:
            if e.code == "lease_lost":  # cancelled, or given to another worker: leave it
                print(f"worker: {lease.task_id} is no longer ours: {e}", file=sys.stderr)
                return False
            problem = e
        except Exception as e:  # any other failure is the task's
            problem = e
        print(f"worker: {lease.task_id} failed: {problem}", file=sys.stderr)
        if not lease.lost.is_set():
            try:
                lease.post("fail", {"error": f"example worker: {problem}"})
            except (ApiError, OSError) as refused:
                print(f"worker: could not fail {lease.task_id}: {refused}", file=sys.stderr)
        return False
    finally:
        lease.done.set()


def main():
    if not TOKEN:
        sys.exit("worker: set LIVESESSION_WORKER_TOKEN (livesession tasks worker-token NAME)")
    once = "--once" in sys.argv[1:]
    while True:
        try:
            completed = handle(claim())
        except ApiError as e:
            if e.status in (400, 401, 403):  # a bad token or request: retrying will not help
                sys.exit(f"worker: {e}")
            print(f"worker: {e}; retrying in 5 s", file=sys.stderr)
            time.sleep(5)
            continue
        except OSError as e:  # the server is unreachable (restarting?)
            print(f"worker: {e}; retrying in 5 s", file=sys.stderr)
            time.sleep(5)
            continue
        if once:
            sys.exit(0 if completed else 1)


if __name__ == "__main__":
    main()
