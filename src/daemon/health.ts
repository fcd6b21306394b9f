// /healthz (the process is alive and its event loop answers), /readyz (our lease is held and the
// env file written), /metrics (counters as JSON).
import { createServer, type Server } from 'node:http';

export interface HealthSource {
  ready(): boolean;
  metrics(): Record<string, unknown>;
}

export async function startHealthServer(host: string, port: number, source: HealthSource): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (code: number, body: string, type = 'text/plain') => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n');
    if (path === '/healthz') return reply(200, 'ok\n');
    if (path === '/readyz') return source.ready() ? reply(200, 'ready\n') : reply(503, 'not ready\n');
    if (path === '/metrics') return reply(200, JSON.stringify(source.metrics()) + '\n', 'application/json');
    return reply(404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
