// Serves the flannel CNI plugin on a Unix socket. The executable the runtime runs is a small
// compiled client (src/native/cni_client.c) that hands each request here, so the plugin's logic
// (src/cni/plugin.ts runPlugin, the same code the standalone plugin runs) and its delegate start
// from this warm process instead of a new Node per call. Protocol: src/cni/protocol.ts; design,
// security and fallback: docs/cni.md.
//
// Requests are served concurrently, each on its own connection. A request that is not the protocol,
// too large, or not sent in time gets a CNI error result; one this daemon cannot serve as the
// standalone plugin would (another network namespace; from another mount namespace, a host path it
// does not see as the caller does) is handed back, and the client runs the standalone plugin.
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname, isAbsolute } from 'node:path';
import { delegateEnvironment } from '../cni/delegate.js';
import { CNI_ERR, CniError } from '../cni/errors.js';
import { hostPaths, pathsToFirstExisting } from '../cni/host-paths.js';
import { LATEST_VERSION, runPlugin } from '../cni/plugin.js';
import {
  FRAME, FRAME_HEADER_BYTES, IDENTITIES_MAX_BYTES, PROTOCOL, ProtocolError, REQUEST_MAX_BYTES,
  type CniRequest, type Frame, decodeIdentities, decodeRequest, encodeFrame, encodeResult, encodeStrings,
} from '../cni/protocol.js';
import type { Logger } from '../common/log.js';
import { cniMetrics } from '../common/metrics.js';

export interface CniServerOptions {
  path: string;
  log: Logger;
  /** Requests served at once; a client beyond them is handed back to its standalone plugin. */
  maxConnections?: number;
  /** Time a client has to send its request, and to answer a question about paths. */
  readTimeoutMs?: number;
  /** How long close() waits for the requests in progress. */
  drainTimeoutMs?: number;
}

export interface CniServer {
  /** Stops accepting (the socket file goes) and waits for the requests in progress. */
  close(): Promise<void>;
}

/** "<st_dev>:<st_ino>" of a path (links followed), "" when it cannot be read: what the client sends. */
function identity(path: string): string {
  try {
    const st = statSync(path, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return '';
  }
}

/** The socket's directory: created if missing; refused when someone other than root could replace the socket. */
function checkDirectory(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const st = statSync(dir);
  const euid = process.geteuid?.() ?? 0;
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  if (st.uid !== 0 && st.uid !== euid) throw new Error(`${dir} is owned by uid ${st.uid}, not root: its owner could replace the socket`);
  if ((st.mode & 0o022) !== 0) {
    throw new Error(`${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): they could replace the socket`);
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Removes a socket left by a daemon that died; refuses to take one another process serves. */
async function claimPath(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  if (await answers(path)) throw new Error(`another process serves ${path} (another flanneld on this host? give each its own --cni-socket)`);
  unlinkSync(path);
}

/** Reads the frames of one connection, one at a time, each within a size and a deadline. */
class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;
  private ended = false;
  private wake: (() => void) | null = null;

  constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.size += d.length;
      // Never more than one largest frame in memory: the frame is decided before more is read.
      if (this.size > FRAME_HEADER_BYTES + REQUEST_MAX_BYTES) sock.pause();
      this.wake?.();
    });
    const end = (): void => {
      this.ended = true;
      this.wake?.();
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', end);
  }

  async next(maxPayload: number, timeoutMs: number): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.size >= FRAME_HEADER_BYTES) {
        const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
        this.chunks = [all];
        const length = all.readUInt32BE(1);
        if (length > maxPayload) throw new ProtocolError(`a frame of ${length} bytes is larger than the ${maxPayload} bytes taken`);
        if (all.length >= FRAME_HEADER_BYTES + length) {
          const frame = { type: all[0]!, payload: all.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length) };
          const rest = all.subarray(FRAME_HEADER_BYTES + length);
          this.chunks = rest.length > 0 ? [rest] : [];
          this.size = rest.length;
          if (this.sock.isPaused()) this.sock.resume();
          return frame;
        }
      }
      if (this.ended) throw new CniError(CNI_ERR.ioFailure, 'flannel CNI request: the connection ended before the request was complete');
      const left = deadline - Date.now();
      if (left <= 0) throw new CniError(CNI_ERR.ioFailure, `flannel CNI request: not complete within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
  }
}

const COMMANDS = new Set(['ADD', 'DEL', 'CHECK', 'VERSION']);

export async function startCniServer(opts: CniServerOptions): Promise<CniServer> {
  const { path, log } = opts;
  const maxConnections = opts.maxConnections ?? 64;
  const readTimeoutMs = opts.readTimeoutMs ?? 5_000;
  const drainTimeoutMs = opts.drainTimeoutMs ?? 30_000;
  checkDirectory(dirname(path));
  await claimPath(path);

  // Who we are, as the client reports itself: requests from elsewhere are handed back.
  const ownNetns = identity('/proc/self/ns/net');
  const ownMntns = identity('/proc/self/ns/mnt');
  const inProgress = new Set<Promise<void>>();

  const reply = (sock: Socket, type: number, payload: Buffer): void => {
    if (!sock.destroyed) sock.end(encodeFrame(type, payload));
  };

  /** Why this daemon cannot serve `req` as the standalone plugin would serve it, or null. */
  const declineReason = async (req: CniRequest, reader: FrameReader, sock: Socket): Promise<string | null> => {
    if (req.protocol !== PROTOCOL) return `the client speaks ${req.protocol}, this flanneld ${PROTOCOL}`;
    if (req.netns === '' || req.netns !== ownNetns) return 'the client runs in another network namespace than flanneld';
    const paths = hostPaths(req.env, req.stdin);
    const relative = [...paths.read, ...paths.written].find((p) => !isAbsolute(p));
    if (relative !== undefined) return `the request names a relative path, ${JSON.stringify(relative)}, and flanneld's working directory is not the runtime's`;
    if (req.mntns !== '' && req.mntns === ownMntns) return null;
    // Another mount namespace (flanneld in a container): serve only if every path the request
    // touches is the same file for both, or absent for both.
    if (paths.otherIpam !== null) return `flanneld runs in another mount namespace, and IPAM type ${JSON.stringify(paths.otherIpam)} keeps state it cannot check`;
    // A directory the plugin creates may be missing on one side only while a concurrent request
    // creates it: what must be the same is the deepest one both see.
    const chains = paths.written.map((p) => pathsToFirstExisting(p, (q) => identity(q) !== ''));
    const asked = [...paths.read, ...chains.flat()];
    if (asked.length === 0) return null;
    sock.write(encodeFrame(FRAME.paths, encodeStrings(asked)));
    const answer = await reader.next(IDENTITIES_MAX_BYTES, readTimeoutMs);
    if (answer.type !== FRAME.identities) throw new ProtocolError(`expected the identities of the paths (I), got 0x${answer.type.toString(16)}`);
    const theirs = decodeIdentities(answer.payload, asked.length);
    const unlike = (path: string): string => `flanneld runs in another mount namespace and does not see ${path} as the runtime does (mount it from the host)`;
    const differs = paths.read.find((p, k) => identity(p) !== theirs[k]);
    if (differs !== undefined) return unlike(differs);
    let at = paths.read.length;
    for (const chain of chains) {
      const ids = chain.map((p, k) => ({ path: p, ours: identity(p), theirs: theirs[at + k]! }));
      at += chain.length;
      const common = ids.find((x) => x.ours !== '' && x.theirs !== '');
      if (!common || common.ours !== common.theirs) return unlike(common?.path ?? chain[chain.length - 1]!);
    }
    return null;
  };

  const serve = async (sock: Socket): Promise<void> => {
    const reader = new FrameReader(sock);
    const started = Date.now();
    let command = 'unknown';
    let containerId: string | undefined;
    try {
      const first = await reader.next(REQUEST_MAX_BYTES, readTimeoutMs);
      if (first.type !== FRAME.request) throw new ProtocolError(`the first frame must be a request (Q), not 0x${first.type.toString(16)}`);
      const req = decodeRequest(first.payload);
      const named = req.env['CNI_COMMAND'] ?? '';
      command = COMMANDS.has(named) ? named : 'other';
      containerId = req.env['CNI_CONTAINERID'];
      const decline = await declineReason(req, reader, sock);
      if (decline !== null) {
        cniMetrics.requests.inc({ command, outcome: 'unavailable' });
        log.info({ command, containerId, reason: decline }, 'CNI request handed back to the standalone plugin');
        reply(sock, FRAME.unavailable, Buffer.from(decline));
        return;
      }
      const out = await runPlugin(delegateEnvironment(req.env), req.stdin);
      cniMetrics.requests.inc({ command, outcome: out.exitCode === 0 ? 'ok' : 'error' });
      log.debug({ command, containerId, exitCode: out.exitCode, ms: Date.now() - started }, 'CNI request served');
      reply(sock, FRAME.result, encodeResult(out.exitCode, out.stdout, out.stderr));
    } catch (err) {
      const e = err instanceof CniError ? err : new CniError(CNI_ERR.internal, `flannel CNI request: ${(err as Error).message}`);
      cniMetrics.requests.inc({ command, outcome: 'refused' });
      log.warn({ command, containerId, code: e.code, err: e.message }, 'CNI request refused');
      reply(sock, FRAME.result, encodeResult(1, JSON.stringify(e.toJSON(LATEST_VERSION)) + '\n', ''));
    }
  };

  const server: Server = createServer({ allowHalfOpen: true }, (sock) => {
    if (inProgress.size >= maxConnections) {
      sock.on('error', () => {});
      cniMetrics.requests.inc({ command: 'unknown', outcome: 'unavailable' });
      reply(sock, FRAME.unavailable, Buffer.from(`flanneld is serving ${maxConnections} requests already`));
      return;
    }
    const done: Promise<void> = serve(sock).finally(() => inProgress.delete(done));
    inProgress.add(done);
  });
  // The socket is made 0600 from the start: bind() applies the umask, and the listen below binds
  // synchronously, so no other file is created meanwhile.
  const umask = process.umask(0o177);
  try {
    server.listen(path);
  } finally {
    process.umask(umask);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  chmodSync(path, 0o600);
  log.info({ socket: path }, 'serving the flannel CNI plugin');

  return {
    close: async () => {
      server.close();
      if (inProgress.size === 0) return;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), drainTimeoutMs)));
      const drained = Promise.all(inProgress).then(() => false);
      if (await Promise.race([drained, timedOut])) {
        log.warn({ requests: inProgress.size }, 'stopping with CNI requests still in progress; their clients run the standalone plugin');
      }
      clearTimeout(timer);
    },
  };
}
