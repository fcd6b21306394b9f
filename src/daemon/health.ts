// /healthz (the process is alive and its event loop answers), /readyz (our lease is held and the
// env file written), /metrics (Prometheus text format, from the one metrics registry).
import type { Server } from 'node:http';
import { createRequire } from 'node:module';
import { metricsRegistry } from '../common/metrics.js';
import { type ScrapeSource, serveDaemonMetrics } from './metrics-daemon.js';

// node:http through require, not import: Node 22 builds the ES-module face of node:http by reading
// every export, its lazy WebSocket among them, which loads undici and compiles its WebAssembly — and
// the daemon runs without WebAssembly (bin/flanneld: --lite-mode), so that import would throw at start.
const { createServer } = createRequire(import.meta.url)('node:http') as typeof import('node:http');

export type { LeaseInfo } from './metrics-daemon.js';
export type HealthSource = ScrapeSource;

export async function startHealthServer(host: string, port: number, source: HealthSource): Promise<Server> {
  serveDaemonMetrics(source);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
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
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
