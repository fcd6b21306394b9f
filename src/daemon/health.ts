// /healthz (the process is alive and its event loop answers), /readyz (our lease is held and the
// env file written), /metrics (Prometheus text format, from the one metrics registry).
//
// The server may listen on every address (--healthz-ip=0.0.0.0, for a remote Prometheus), so it must
// not let a few slow or idle clients hold it: connections are capped, and a client gets a few seconds
// for its headers and its request rather than Node's 60 s and 300 s. At the cap a new connection
// replaces the oldest one that is not being answered (a slowloris connection still sending headers,
// or an idle keep-alive one), so that a probe keeps getting through while someone hoards connections.
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { metricsRegistry } from '../common/metrics.js';
import { type ScrapeSource, serveDaemonMetrics } from './metrics-daemon.js';

// node:http through require, not import: Node 22 builds the ES-module face of node:http by reading
// every export, its lazy WebSocket among them, which loads undici and compiles its WebAssembly — and
// the daemon runs without WebAssembly (bin/flanneld: --lite-mode), so that import would throw at start.
const { createServer } = createRequire(import.meta.url)('node:http') as typeof import('node:http');

export type { LeaseInfo } from './metrics-daemon.js';
export type HealthSource = ScrapeSource;

export interface HealthServerLimits {
  /** Open connections at most; at the cap a new one replaces the oldest that is not being answered. */
  maxConnections: number;
  /** Time for a client to send its request headers. */
  headersTimeoutMs: number;
  /** Time for a client to send its whole request. */
  requestTimeoutMs: number;
  /** How long an idle keep-alive connection is kept. */
  keepAliveTimeoutMs: number;
  /** A connection with no traffic either way for this long is closed (e.g. a client that stopped reading). */
  idleTimeoutMs: number;
}

/**
 * Prometheus, kubelet probes and `flannelctl status` each hold a connection or two, and every answer
 * is immediate (/metrics renders in milliseconds): these leave ample room for them.
 */
export const HEALTH_SERVER_LIMITS: Readonly<HealthServerLimits> = {
  maxConnections: 32,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 10_000,
};

/** How often Node checks the header and request deadlines (its default, 30 s, would outlast them). */
const DEADLINE_CHECK_MS = 1_000;

export async function startHealthServer(
  host: string,
  port: number,
  source: HealthSource,
  limits: HealthServerLimits = HEALTH_SERVER_LIMITS,
): Promise<Server> {
  serveDaemonMetrics(source);
  const server = createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: DEADLINE_CHECK_MS,
    },
    (req, res) => answer(req, res, source),
  );
  server.setTimeout(limits.idleTimeoutMs); // with no 'timeout' listener, Node destroys the socket
  capConnections(server, limits.maxConnections);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

function answer(req: IncomingMessage, res: ServerResponse, source: HealthSource): void {
  const path = (req.url ?? '/').split('?')[0];
  const reply = (code: number, body: string, type = 'text/plain; charset=utf-8'): void => {
    res.writeHead(code, { 'content-type': type });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n');
  if (path === '/healthz') return reply(200, 'ok\n');
  if (path === '/readyz') return source.ready() ? reply(200, 'ready\n') : reply(503, 'not ready\n');
  if (path === '/metrics') {
    metricsRegistry.metrics().then(
      (text) => reply(200, text, metricsRegistry.contentType),
      (err: unknown) => reply(500, `cannot render metrics: ${(err as Error).message}\n`),
    );
    return;
  }
  return reply(404, 'not found\n');
}

/**
 * At most `max` open connections. Node's own maxConnections refuses the newcomer, which lets whoever
 * holds the slots first keep everyone else out; here the newcomer takes the place of the oldest
 * connection without a request in progress, and is refused only when every slot is answering one.
 */
function capConnections(server: Server, max: number): void {
  /** Open connections, oldest first (a Map keeps insertion order), and whether each is being answered. */
  const open = new Map<Socket, { answering: boolean }>();
  server.on('connection', (socket: Socket) => {
    if (open.size >= max) {
      let victim: Socket | null = null;
      for (const [s, state] of open) {
        if (!state.answering) {
          victim = s;
          break;
        }
      }
      if (victim === null) {
        socket.destroy();
        return;
      }
      open.delete(victim);
      victim.destroy();
    }
    open.set(socket, { answering: false });
    socket.once('close', () => open.delete(socket));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const state = open.get(req.socket);
    if (!state) return;
    state.answering = true;
    res.once('close', () => (state.answering = false));
  });
}
