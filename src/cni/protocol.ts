// The framed protocol between the compiled CNI client (src/native/cni_client.c, what the runtime
// executes) and flanneld, which serves CNI requests on a Unix socket (src/daemon/cni-server.ts).
// docs/cni.md describes it; this file and cni_client.c are its two implementations.
//
// Every message is a frame: one type byte, the payload's length as a 32-bit big-endian integer,
// the payload. The client sends a request (Q); the daemon may ask for the identity of host paths
// (P), which the client answers (I); the daemon ends with a result (R) or says it cannot serve (U),
// and the client then runs the standalone plugin.
//   Q  "flannel-cni/1" NUL  <netns id> NUL  <mntns id> NUL  (NAME=value NUL)*  NUL  <stdin bytes>
//   P  (path NUL)*                      I  (<id> NUL)*, one per path, in order
//   R  <exit status: 1 byte>  <stdout length: u32 BE>  <stdout>  <stderr>
//   U  <reason, text>
// An id is "<st_dev>:<st_ino>" in decimal as stat(2) gives them (following links), or "" when the
// path cannot be read.
import { CNI_ERR, CniError } from './errors.js';

export const PROTOCOL = 'flannel-cni/1';
export const DEFAULT_CNI_SOCKET = '/run/flannel/cni.sock';

/** The largest request the daemon reads; the client sends a larger one to the standalone plugin. */
export const REQUEST_MAX_BYTES = 256 * 1024;
/** The largest answer to a path question. */
export const IDENTITIES_MAX_BYTES = 64 * 1024;
/** At most this many variables in a request (the client sends CNI_* and PATH). */
export const REQUEST_MAX_VARIABLES = 256;

export const FRAME_HEADER_BYTES = 5;

export const FRAME = {
  request: 0x51, // Q
  paths: 0x50, // P
  identities: 0x49, // I
  result: 0x52, // R
  unavailable: 0x55, // U
} as const;

export interface Frame {
  type: number;
  payload: Buffer;
}

export function encodeFrame(type: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header[0] = type;
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

/** A request that is not this protocol: the daemon answers it with a CNI error. */
export class ProtocolError extends CniError {
  constructor(msg: string) {
    super(CNI_ERR.decodingFailure, `flannel CNI request: ${msg}`);
    this.name = 'ProtocolError';
  }
}

export interface CniRequest {
  protocol: string;
  /** Identity of the client's network and mount namespaces ("" when it could not read them). */
  netns: string;
  mntns: string;
  env: Record<string, string>;
  stdin: string;
}

const VARIABLE = /^([A-Za-z_][A-Za-z0-9_]*)=/;

/** The NUL-terminated strings at the start of `buf`, up to and without the first empty one. */
function splitStrings(buf: Buffer, from: number, max: number): { strings: string[]; end: number } {
  const strings: string[] = [];
  let at = from;
  for (;;) {
    const nul = buf.indexOf(0, at);
    if (nul < 0) throw new ProtocolError('a field is not terminated');
    if (nul === at) return { strings, end: nul + 1 };
    if (strings.length >= max) throw new ProtocolError(`more than ${max} fields`);
    strings.push(buf.toString('utf8', at, nul));
    at = nul + 1;
  }
}

/**
 * Decodes a request payload. A payload that does not start with "flannel-cni/<n>" is not this
 * protocol (ProtocolError); one of another version decodes, and the daemon declines it.
 */
export function decodeRequest(payload: Buffer): CniRequest {
  const first = payload.indexOf(0);
  const protocol = first < 0 ? '' : payload.toString('latin1', 0, first);
  if (!/^flannel-cni\/[0-9]{1,4}$/.test(protocol)) throw new ProtocolError('not a flannel CNI request (it must start with "flannel-cni/1")');
  const head = splitStrings(payload, first + 1, REQUEST_MAX_VARIABLES + 2);
  const [netns, mntns, ...variables] = head.strings;
  if (netns === undefined || mntns === undefined) throw new ProtocolError('the namespace fields are missing');
  const env: Record<string, string> = {};
  for (const v of variables) {
    const m = VARIABLE.exec(v);
    if (!m) throw new ProtocolError(`"${v.slice(0, 40)}" is not NAME=value`);
    env[m[1]!] = v.slice(m[0].length);
  }
  return { protocol, netns, mntns, env, stdin: payload.toString('utf8', head.end) };
}

export function encodeRequest(req: CniRequest): Buffer {
  const fields = [req.protocol, req.netns, req.mntns, ...Object.entries(req.env).map(([k, v]) => `${k}=${v}`)];
  return Buffer.concat([...fields.map((f) => Buffer.from(`${f}\0`)), Buffer.from([0]), Buffer.from(req.stdin)]);
}

export function encodeStrings(strings: readonly string[]): Buffer {
  return Buffer.from(strings.map((s) => `${s}\0`).join(''));
}

/** The answer to a path question: one id per path asked. */
export function decodeIdentities(payload: Buffer, count: number): string[] {
  const ids: string[] = [];
  let at = 0;
  while (at < payload.length) {
    const nul = payload.indexOf(0, at);
    if (nul < 0) throw new ProtocolError('an identity is not terminated');
    ids.push(payload.toString('latin1', at, nul));
    at = nul + 1;
  }
  if (ids.length !== count) throw new ProtocolError(`${ids.length} identities for ${count} paths`);
  return ids;
}

export function encodeResult(exitCode: number, stdout: string, stderr: string): Buffer {
  const out = Buffer.from(stdout);
  const head = Buffer.alloc(5);
  head[0] = exitCode & 0xff;
  head.writeUInt32BE(out.length, 1);
  return Buffer.concat([head, out, Buffer.from(stderr)]);
}

export function decodeResult(payload: Buffer): { exitCode: number; stdout: string; stderr: string } {
  if (payload.length < 5) throw new ProtocolError('result too short');
  const n = payload.readUInt32BE(1);
  if (n > payload.length - 5) throw new ProtocolError('result stdout length beyond the frame');
  return { exitCode: payload[0]!, stdout: payload.toString('utf8', 5, 5 + n), stderr: payload.toString('utf8', 5 + n) };
}
