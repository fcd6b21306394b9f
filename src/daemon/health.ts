// /healthz (the process is alive and its event loop answers), /readyz (our lease is held and the
// env file written), /metrics (Prometheus text format, from the one metrics registry).
import { createServer, type Server } from 'node:http';
import { metricsRegistry } from '../common/metrics.js';
import { type ScrapeSource, serveDaemonMetrics } from './metrics-daemon.js';

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
