// The health/metrics server under clients that hold connections: slowloris connections (headers sent
// a line at a time, never finished) and silent ones must neither keep /healthz from answering nor
// pile up, and each is closed after a few seconds rather than Node's 60 s (headers) and 300 s
// (request). The server is the daemon's own (startHealthServer, shipped limits) on a loopback port.
import type { Server } from 'node:http';
import { request } from 'node:http';
import { type AddressInfo, type Socket, connect } from 'node:net';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { HEALTH_SERVER_LIMITS, startHealthServer } from '../src/daemon/health.js';
import { waitFor } from '../testbed/netns.js';

let server: Server;
let port = 0;
const clients: Socket[] = [];

beforeAll(async () => {
  server = await startHealthServer('127.0.0.1', 0, { ready: () => true });
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  for (const c of clients) c.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

/** GET a path on a fresh connection; the status, or the error's message. */
function get(path: string, timeoutMs = 5_000): Promise<number | string> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => resolve(err.message));
    req.end();
  });
}

interface HeldConnection {
  socket: Socket;
  closed: boolean;
  closedAt: number;
  openedAt: number;
}

/** A connection that sends the start of a request, then one header line every `trickleMs`, never the end. */
async function slowloris(trickleMs: number | null): Promise<HeldConnection> {
  const socket = connect(port, '127.0.0.1');
  clients.push(socket);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const held: HeldConnection = { socket, closed: false, closedAt: 0, openedAt: Date.now() };
  socket.on('error', () => {});
  socket.on('data', () => {}); // a 408 answer, if any
  let timer: NodeJS.Timeout | null = null;
  socket.on('close', () => {
    held.closed = true;
    held.closedAt = Date.now();
    if (timer) clearInterval(timer);
  });
  if (trickleMs !== null) {
    socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    let n = 0;
    timer = setInterval(() => socket.writable && socket.write(`X-Slow-${n++}: x\r\n`), trickleMs);
  }
  return held;
}

const openConnections = (): Promise<number> => new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));

test('100 slowloris connections: /healthz keeps answering and the server never holds more than its cap', async () => {
  const cap = HEALTH_SERVER_LIMITS.maxConnections;
  const held: HeldConnection[] = [];
  let most = 0;
  for (let i = 0; i < 100; i++) {
    held.push(await slowloris(500));
    most = Math.max(most, await openConnections());
  }
  // Every probe gets through although the slots are all taken by slow clients.
  for (let i = 0; i < 5; i++) {
    expect(await get('/healthz'), `probe ${i}`).toBe(200);
    most = Math.max(most, await openConnections());
  }
  expect(await get('/metrics')).toBe(200);
  expect(most).toBeLessThanOrEqual(cap);
  // The oldest gave way to the newer ones: at most `cap` of ours are still open.
  expect(held.filter((h) => !h.closed).length).toBeLessThanOrEqual(cap);
  for (const h of held) h.socket.destroy();
});

test('a client that never finishes its headers, and one that sends nothing, are disconnected within seconds (not 60 s)', async () => {
  const trickling = await slowloris(500); // never idle, so only the headers deadline can end it
  const silent = await slowloris(null);
  const limit = HEALTH_SERVER_LIMITS.headersTimeoutMs + 10_000; // deadlines are checked every second; slack for a busy machine
  expect(await waitFor(() => trickling.closed && silent.closed, limit)).toBe(true);
  const after = (h: HeldConnection): number => h.closedAt - h.openedAt;
  console.log(`[health] trickling client closed after ${after(trickling)} ms, silent client after ${after(silent)} ms`);
  // Not before its deadline: it is the deadline that closed them, not something else.
  expect(after(trickling)).toBeGreaterThanOrEqual(HEALTH_SERVER_LIMITS.headersTimeoutMs - 100);
  expect(await get('/healthz')).toBe(200);
});

test('an idle keep-alive connection is closed after the keep-alive timeout', async () => {
  const socket = connect(port, '127.0.0.1');
  clients.push(socket);
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  let reply = '';
  let closedAt = 0;
  socket.on('data', (d: Buffer) => (reply += d.toString()));
  socket.on('close', () => (closedAt = Date.now()));
  socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n');
  // The whole answer (chunked: "ok\n", then the last, empty chunk).
  expect(await waitFor(() => reply.startsWith('HTTP/1.1 200') && reply.endsWith('ok\n\r\n0\r\n\r\n'), 5_000), JSON.stringify(reply)).toBe(true);
  const answeredAt = Date.now();
  expect(await waitFor(() => closedAt > 0, HEALTH_SERVER_LIMITS.keepAliveTimeoutMs + 10_000)).toBe(true);
  expect(closedAt - answeredAt).toBeGreaterThanOrEqual(HEALTH_SERVER_LIMITS.keepAliveTimeoutMs - 500);
});
