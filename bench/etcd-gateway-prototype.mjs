// A PROTOTYPE etcd v3 client over etcd's JSON gRPC-gateway (HTTP/1.1, node:http only), written to
// measure how much memory an etcd client needs when it is not grpc-js + protobufjs. It is not the
// product's client and handles no failures beyond reporting them. Plain JS so that the measured
// process runs it with plain node (tsx would add its own loader to the figures).
// Endpoints (etcd 3.4): POST /v3/kv/range, /v3/kv/txn, /v3/lease/grant, /v3/lease/keepalive,
// /v3/watch (a long response of newline-separated JSON messages).
import http from 'node:http';

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const b64 = (s) => Buffer.from(s).toString('base64');
const unb64 = (s) => Buffer.from(s ?? '', 'base64').toString('utf8');

/** The smallest key greater than every key starting with prefix (etcd's range_end for a prefix). */
function prefixEnd(prefix) {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i] < 0xff) {
      const end = Buffer.from(b.subarray(0, i + 1));
      end[i]++;
      return end.toString('base64');
    }
  }
  return b64('\0');
}

export class GatewayClient {
  /** @param {string} endpoint e.g. http://127.0.0.1:2379 */
  constructor(endpoint) {
    this.url = new URL(endpoint);
  }

  /** One unary call: POST JSON, parse the JSON answer. */
  call(path, body) {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: this.url.hostname, port: this.url.port, path, method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) return reject(new Error(`${path}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
          resolve(JSON.parse(text));
        });
      });
      req.setTimeout(5000, () => req.destroy(new Error(`${path}: timeout`)));
      req.on('error', reject);
      req.end(JSON.stringify(body));
    });
  }

  /** Every key under prefix, in pages of `limit`, as { key, value, modRevision }. */
  async list(prefix, limit = 1000) {
    const out = [];
    const end = prefixEnd(prefix);
    let key = b64(prefix);
    let revision;
    for (;;) {
      const res = await this.call('/v3/kv/range', { key, range_end: end, limit, ...(revision ? { revision } : {}) });
      revision ??= res.header.revision;
      const kvs = res.kvs ?? [];
      for (const kv of kvs) out.push({ key: unb64(kv.key), value: unb64(kv.value), modRevision: Number(kv.mod_revision) });
      if (!res.more || kvs.length === 0) break;
      key = b64(unb64(kvs[kvs.length - 1].key) + '\0');
    }
    return { kvs: out, revision: Number(revision) };
  }

  async leaseGrant(ttl) {
    const res = await this.call('/v3/lease/grant', { TTL: ttl });
    return res.ID;
  }

  async keepAlive(id) {
    const res = await this.call('/v3/lease/keepalive', { ID: id });
    return Number(res.result?.TTL ?? 0);
  }

  async putIfAbsent(key, value, lease) {
    const res = await this.call('/v3/kv/txn', {
      compare: [{ key: b64(key), target: 'CREATE', result: 'EQUAL', create_revision: '0' }],
      success: [{ request_put: { key: b64(key), value: b64(value), lease } }],
    });
    return Boolean(res.succeeded);
  }

  /** Watches prefix from a revision; onEvents gets [{ type, key, value, modRevision }]. Returns a stop function. */
  watch(prefix, fromRevision, onEvents, onError) {
    const body = JSON.stringify({ create_request: { key: b64(prefix), range_end: prefixEnd(prefix), start_revision: String(fromRevision) } });
    const req = http.request({ host: this.url.hostname, port: this.url.port, path: '/v3/watch', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let pending = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        pending += chunk;
        // The gateway writes one JSON message per line.
        let nl;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl).trim();
          pending = pending.slice(nl + 1);
          if (!line) continue;
          const msg = JSON.parse(line);
          if (msg.error) return onError(new Error(JSON.stringify(msg.error)));
          const events = msg.result?.events ?? [];
          if (events.length > 0) {
            onEvents(events.map((e) => ({ type: e.type ?? 'PUT', key: unb64(e.kv.key), value: unb64(e.kv.value), modRevision: Number(e.kv.mod_revision) })));
          }
        }
      });
      res.on('end', () => onError(new Error('watch ended')));
    });
    req.on('error', onError);
    req.end(body);
    return () => req.destroy();
  }
}
