// A user-space link emulator (this kernel has no netem): a TCP relay on
// 127.0.0.1 that gives each direction of every connection a rate limit (token
// bucket) and a one-way delay (half the round trip), keeping byte order.
//
//   const link = await startLink({ target: 8080, mbit: 20, rttMs: 80 });
//   // connect to 127.0.0.1:link.port instead of :8080
//   link.setRate(5); link.close();
//
// The rate is shared by all connections in one direction (like one access
// link); bytes leave the bucket in chunks of at most 16 KiB, each delivered
// `rttMs / 2` after it left, so a saturated link delivers a steady trickle
// and an idle one delivers bursts, as a real one does.

import net from 'node:net';

const CHUNK = 16 * 1024;
const TICK_MS = 2;
const BUFFER = 256 * 1024;

class Direction {
  constructor(link) {
    this.link = link;
    this.tokens = 0;
    this.last = performance.now();
    this.queue = []; // {socket, buf}
    this.queued = 0;
    this.paused = new Set();
    this.timer = null;
  }

  // The bottleneck's buffer: a sender that fills it is paused (TCP
  // backpressure) instead of queueing without bound.
  push(source, socket, buf) {
    this.queue.push({ socket, buf });
    this.queued += buf.length;
    if (this.queued > BUFFER && !source.isPaused()) {
      source.pause();
      this.paused.add(source);
    }
    this.pump();
  }

  pump() {
    const now = performance.now();
    const rate = (this.link.mbit * 1e6) / 8 / 1000; // bytes per ms
    // At most one chunk of burst beyond the current need.
    this.tokens = Math.min(this.tokens + (now - this.last) * rate, CHUNK);
    this.last = now;
    while (this.queue.length && this.tokens > 0) {
      const head = this.queue[0];
      const n = Math.min(head.buf.length, Math.ceil(this.tokens), CHUNK);
      const part = head.buf.subarray(0, n);
      head.buf = head.buf.subarray(n);
      if (head.buf.length === 0) this.queue.shift();
      this.tokens -= n;
      this.queued -= n;
      this.link.deliver(head.socket, part);
    }
    if (this.queued < BUFFER / 2 && this.paused.size) {
      for (const source of this.paused) source.resume();
      this.paused.clear();
    }
    clearTimeout(this.timer);
    this.timer = this.queue.length ? setTimeout(() => this.pump(), TICK_MS) : null;
  }
}

/** Start a relay to 127.0.0.1:`target`; resolves to {port, setRate, setRtt, close, bytes}. */
export function startLink({ target, mbit, rttMs, host = '127.0.0.1' }) {
  const sockets = new Set();
  const link = {
    mbit,
    rttMs,
    bytes: { up: 0, down: 0 },
    // Delivery after the one-way delay; setTimeout keeps order for equal delays.
    deliver(socket, part) {
      setTimeout(() => {
        if (!socket.destroyed) socket.write(part);
      }, link.rttMs / 2);
    },
  };
  const up = new Direction(link);
  const down = new Direction(link);
  const server = net.createServer((client) => {
    client.setNoDelay(true);
    const remote = net.connect({ host, port: target });
    remote.setNoDelay(true);
    sockets.add(client).add(remote);
    client.on('data', (b) => {
      link.bytes.up += b.length;
      up.push(client, remote, b);
    });
    remote.on('data', (b) => {
      link.bytes.down += b.length;
      down.push(remote, client, b);
    });
    const end = () => {
      // Let what is in flight arrive before closing.
      setTimeout(() => {
        client.destroy();
        remote.destroy();
        sockets.delete(client);
        sockets.delete(remote);
      }, link.rttMs / 2 + 50);
    };
    client.on('close', end).on('error', end);
    remote.on('close', end).on('error', end);
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        bytes: link.bytes,
        setRate: (m) => {
          link.mbit = m;
        },
        setRtt: (ms) => {
          link.rttMs = ms;
        },
        close: () =>
          new Promise((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}
