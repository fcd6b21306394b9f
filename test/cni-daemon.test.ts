// flanneld serving the CNI plugin (src/daemon/cni-server.ts) to the compiled client
// (src/native/cni_client.c), on a one-node cluster of a real daemon and etcd, delegating to Debian's
// bridge and host-local: a burst of concurrent ADDs, requests that are not the protocol, the daemon
// stopping (cleanly, with a request in flight, or killed) and coming back, who may use the socket,
// and requests from another mount or network namespace. Which path served a call is never guessed:
// the daemon path is a copy of the client with no standalone plugin beside it (test/harness/cni.ts).
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FRAME, PROTOCOL, REQUEST_MAX_BYTES, type Frame, decodeResult, encodeFrame, encodeRequest,
} from '../src/cni/protocol.js';
import { silentLogger } from '../src/common/log.js';
import { startCniServer } from '../src/daemon/cni-server.js';
import { type CniCall, type CniPlugin, callCni, cniBuilt, cniPlugin, daemonOnlyClient } from './harness/cni.js';
import { alive, createCluster, killPid, repoPath, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const built = cniBuilt('daemon') && existsSync(repoPath('bin', 'flanneld'));
const BURST = 40;

/** Sends `bytes` to a CNI socket and returns the first frame of the answer (null: closed without one). */
function exchange(socket: string, bytes: Buffer, opts: { end?: boolean } = {}): Promise<Frame | null> {
  return new Promise((resolve, reject) => {
    const conn = connect(socket);
    let got = Buffer.alloc(0);
    conn.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 5 && got.length >= 5 + got.readUInt32BE(1)) {
        conn.destroy();
        resolve({ type: got[0]!, payload: got.subarray(5, 5 + got.readUInt32BE(1)) });
      }
    });
    conn.on('error', reject);
    conn.on('close', () => resolve(null));
    conn.write(bytes);
    if (opts.end) conn.end();
  });
}

/** The CNI error a result frame carries. */
function cniError(frame: Frame | null): { exitCode: number; code: number; msg: string } {
  expect(frame?.type).toBe(FRAME.result);
  const result = decodeResult(frame!.payload);
  const json = JSON.parse(result.stdout) as { code: number; msg: string; cniVersion: string };
  expect(typeof json.cniVersion).toBe('string');
  return { exitCode: result.exitCode, code: json.code, msg: json.msg };
}

describe.skipIf(!built)('flanneld serving the CNI plugin', () => {
  const id = runId();
  const dir = join(tmpdir(), `cni-daemon-${id}`);
  const pods = Array.from({ length: BURST }, (_, k) => `cnid-${id}-p${k}`);
  let cluster: Cluster;
  let node: ClusterNode;
  let served: CniPlugin;
  let standalone: CniPlugin;
  const conf = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    cniVersion: '1.0.0',
    name: `fld-${id}`,
    type: 'flannel',
    subnetFile: node.subnetFile,
    dataDir: join(dir, 'flannel'),
    ipam: { dataDir: join(dir, 'ipam') },
    ...extra,
  });
  const call = (plugin: CniPlugin, c: Omit<CniCall, 'nodeNs'>) => callCni(plugin, { nodeNs: node.ns, ...c });
  const store = (): string[] => (existsSync(join(dir, 'ipam', `fld-${id}`)) ? readdirSync(join(dir, 'ipam', `fld-${id}`)).filter((f) => f.startsWith('198.')) : []);

  beforeAll(async () => {
    mkdirSync(join(dir, 'bin'), { recursive: true });
    cluster = await createCluster({ nodes: 1, config: { Network: '198.19.0.0/16', Backend: { Type: 'host-gw' } }, podsPerNode: 0 });
    node = cluster.nodes[0]!;
    served = cniPlugin('daemon', node.cniSocket, dir);
    standalone = { path: repoPath('bin', 'flannel'), env: { FLANNEL_CNI_SOCKET: node.cniSocket } };
    for (const p of pods) await addNetns(p);
  }, 120_000);

  afterAll(async () => {
    for (const p of pods) await delNetns(p);
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`serves ${BURST} ADDs at once, each reaching its delegate before any finishes, then their DELs`, async () => {
    // A delegate that waits until every ADD of the burst has reached a delegate, then runs bridge: if
    // flanneld ran the requests one after another, the first would wait in vain (and say so).
    const barrier = join(dir, 'barrier');
    mkdirSync(join(barrier, 'in'), { recursive: true });
    mkdirSync(join(barrier, 'out'), { recursive: true });
    writeFileSync(join(dir, 'bin', 'barrier-bridge'), [
      '#!/bin/sh',
      'if [ "$CNI_COMMAND" = ADD ]; then',
      `  : > "${barrier}/in/$CNI_CONTAINERID"`,
      '  waited=0',
      `  while set -- "${barrier}"/in/*; [ $# -lt ${BURST} ]; do`,
      `    waited=$((waited + 1)); if [ $waited -gt 900 ]; then echo "$#" > "${barrier}/out/$CNI_CONTAINERID"; exec /usr/lib/cni/bridge; fi`,
      '    sleep 0.05',
      '  done',
      `  echo met > "${barrier}/out/$CNI_CONTAINERID"`,
      'fi',
      'exec /usr/lib/cni/bridge',
      '',
    ].join('\n'));
    chmodSync(join(dir, 'bin', 'barrier-bridge'), 0o755);
    const c = conf({ delegate: { type: 'barrier-bridge', isGateway: true } });
    const cniPath = `${join(dir, 'bin')}:/usr/lib/cni`;
    const adds = await Promise.all(pods.map((p, k) => call(served, { command: 'ADD', conf: c, containerId: `burst-${id}-${k}`, netns: p, cniPath })));
    for (const add of adds) expect(add.code, add.stdout + add.stderr).toBe(0);
    for (const k of pods.keys()) expect(readFileSync(join(barrier, 'out', `burst-${id}-${k}`), 'utf8')).toBe('met\n');
    const env = await node.env();
    const prefix = env['FLANNEL_SUBNET']!.replace(/\.1\/24$/, '.');
    const addresses = adds.map((a) => ((a.json?.['ips'] ?? []) as { address: string }[])[0]?.address);
    expect(new Set(addresses).size).toBe(BURST);
    for (const a of addresses) expect(a).toMatch(new RegExp(`^${prefix.replace(/\./g, '\\.')}\\d+/24$`));
    for (const [k, p] of pods.entries()) {
      const shown = await run(['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'], { netns: p });
      expect(shown.stdout).toContain(addresses[k]);
    }
    expect(readdirSync(join(dir, 'flannel')).filter((f) => f.startsWith('burst-')).length).toBe(BURST);
    expect(store().length).toBe(BURST);

    const dels = await Promise.all(pods.map((p, k) => call(served, { command: 'DEL', conf: c, containerId: `burst-${id}-${k}`, netns: p, cniPath })));
    for (const del of dels) expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(store()).toEqual([]);
    expect(readdirSync(join(dir, 'flannel')).filter((f) => f.startsWith('burst-'))).toEqual([]);
  }, 120_000);

  it('answers what is not the protocol with a CNI error, declines what it cannot serve, and keeps serving', async () => {
    const valid = (over: Partial<Parameters<typeof encodeRequest>[0]> = {}) =>
      encodeRequest({ protocol: PROTOCOL, netns: '1:1', mntns: '1:1', env: { CNI_COMMAND: 'VERSION' }, stdin: '{}', ...over });
    const header = (type: number, length: number): Buffer => {
      const h = Buffer.alloc(5);
      h[0] = type;
      h.writeUInt32BE(length, 1);
      return h;
    };
    const refused: { bytes: Buffer; end?: boolean; code: number; msg: RegExp }[] = [
      { bytes: Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), code: 6, msg: /larger than the \d+ bytes taken/ },
      { bytes: encodeFrame(0x58, Buffer.from('hello')), code: 6, msg: /first frame must be a request/ },
      { bytes: encodeFrame(FRAME.request, Buffer.from('hello\0world\0')), code: 6, msg: /not a flannel CNI request/ },
      { bytes: encodeFrame(FRAME.request, Buffer.from('flannel-cni/1\0a\0b\0NOEQUALS\0\0{}')), code: 6, msg: /is not NAME=value/ },
      { bytes: encodeFrame(FRAME.request, Buffer.from('flannel-cni/1\0a\0b\0CNI_COMMAND=ADD')), code: 6, msg: /not terminated/ },
      { bytes: header(FRAME.request, REQUEST_MAX_BYTES + 1), code: 6, msg: /larger than/ },
      { bytes: Buffer.concat([header(FRAME.request, 100), Buffer.alloc(10)]), end: true, code: 5, msg: /ended before the request was complete/ },
      // Nothing at all: the daemon gives up after its read timeout.
      { bytes: Buffer.alloc(0), code: 5, msg: /not complete within \d+ ms/ },
    ];
    for (const r of refused) {
      const e = cniError(await exchange(node.cniSocket, r.bytes, { end: r.end }));
      expect(e.exitCode).toBe(1);
      expect(e.code, r.bytes.subarray(0, 40).toString('latin1')).toBe(r.code);
      expect(e.msg).toMatch(r.msg);
    }
    // Well-formed requests it cannot serve as the standalone plugin would are handed back.
    const declined: [Buffer, RegExp][] = [
      [valid({ protocol: 'flannel-cni/2' }), /speaks flannel-cni\/2/],
      [valid(), /another network namespace/], // the test process is not in the node's namespace
    ];
    for (const [bytes, msg] of declined) {
      const frame = await exchange(node.cniSocket, encodeFrame(FRAME.request, bytes));
      expect(frame?.type).toBe(FRAME.unavailable);
      expect(frame!.payload.toString()).toMatch(msg);
    }
    // More connections than it serves at once: the one beyond is handed back, at once.
    const held = await Promise.all(Array.from({ length: 64 }, () => new Promise<ReturnType<typeof connect>>((resolve, reject) => {
      const s = connect(node.cniSocket, () => resolve(s));
      s.on('error', reject);
    })));
    try {
      const frame = await exchange(node.cniSocket, encodeFrame(FRAME.request, valid()));
      expect(frame?.type).toBe(FRAME.unavailable);
      expect(frame!.payload.toString()).toMatch(/serving 64 requests already/);
    } finally {
      for (const s of held) s.destroy();
    }
    // A conf larger than flanneld takes never reaches it: the client runs the standalone plugin.
    const huge = conf({ padding: 'x'.repeat(REQUEST_MAX_BYTES) });
    const tooLarge = await call(served, { command: 'CHECK', conf: huge, containerId: `huge-${id}`, netns: pods[0]! });
    expect(tooLarge.json!['msg']).toMatch(/the request \(\d+ bytes\) is larger than flanneld takes/);
    const hugeStandalone = await call(standalone, { command: 'CHECK', conf: huge, containerId: `huge-${id}`, netns: pods[0]! });
    expect(hugeStandalone.json, hugeStandalone.stdout.slice(0, 300)).toMatchObject({ code: 3 });
    // The daemon is still there, and serves.
    expect(alive(node.pid!)).toBe(true);
    const ok = await waitFor(async () => (await call(served, { command: 'VERSION', conf: { cniVersion: '0.4.0' } })).code === 0, 10_000);
    expect(ok).toBe(true);
    const add = await call(served, { command: 'ADD', conf: conf(), containerId: `after-${id}`, netns: pods[0]! });
    expect(add.code, add.stdout).toBe(0);
    expect((await call(served, { command: 'DEL', conf: conf(), containerId: `after-${id}`, netns: pods[0]! })).code).toBe(0);
    expect(store()).toEqual([]);
  }, 60_000);

  it('runs the standalone plugin while flanneld is stopped or dead, finishes what is in flight, and serves again when back', async () => {
    const ctr = (name: string) => `${name}-${id}`;
    // Served, then flanneld stops cleanly: the socket goes, and CHECK and DEL run standalone.
    const added = await call(served, { command: 'ADD', conf: conf(), containerId: ctr('a'), netns: pods[0]! });
    expect(added.code).toBe(0);
    await cluster.stopDaemon(node);
    expect(existsSync(node.cniSocket)).toBe(false);
    const check = await call(standalone, { command: 'CHECK', conf: conf({ prevResult: added.json }), containerId: ctr('a'), netns: pods[0]! });
    expect(check.code, check.stdout + check.stderr).toBe(0);
    // Without a standalone plugin to fall back to, the error names both failures.
    const neither = await call(served, { command: 'CHECK', conf: conf(), containerId: ctr('a'), netns: pods[0]! });
    expect(neither.json).toMatchObject({ code: 999 });
    expect(neither.json!['msg']).toMatch(/flanneld could not serve the request \(no socket at .*\), and the standalone plugin could not be started: .*\/bin\/flannel: No such file or directory/);
    expect((await call(standalone, { command: 'DEL', conf: conf(), containerId: ctr('a'), netns: pods[0]! })).code).toBe(0);
    expect(existsSync(join(dir, 'flannel', ctr('a')))).toBe(false);
    // A pod added while flanneld is down is deleted by flanneld once it is back.
    expect((await call(standalone, { command: 'ADD', conf: conf(), containerId: ctr('b'), netns: pods[1]! })).code).toBe(0);
    await cluster.startDaemon(node);
    await waitFor(() => existsSync(node.cniSocket), 10_000);
    expect((await call(served, { command: 'DEL', conf: conf(), containerId: ctr('b'), netns: pods[1]! })).code).toBe(0);
    expect(store()).toEqual([]);

    // Killed: its socket file stays behind, nobody answers on it, and the plugin runs standalone.
    expect((await call(served, { command: 'ADD', conf: conf(), containerId: ctr('c'), netns: pods[2]! })).code).toBe(0);
    await cluster.stopDaemon(node, 'SIGKILL');
    expect(statSync(node.cniSocket).isSocket()).toBe(true);
    expect((await call(standalone, { command: 'DEL', conf: conf(), containerId: ctr('c'), netns: pods[2]! })).code).toBe(0);
    expect(store()).toEqual([]);
    // The next flanneld takes the dead one's socket over.
    await cluster.startDaemon(node);
    expect(await waitFor(async () => (await call(served, { command: 'VERSION', conf: {} })).code === 0, 10_000)).toBe(true);

    // Stopped with an ADD in flight: the socket goes at once, the ADD finishes, then flanneld exits.
    const gate = join(dir, 'gate');
    writeFileSync(join(dir, 'bin', 'gate-bridge'), [
      '#!/bin/sh',
      `: > "${gate}.reached"`,
      'waited=0',
      `while [ ! -e "${gate}" ] && [ $waited -lt 600 ]; do waited=$((waited + 1)); sleep 0.05; done`,
      'exec /usr/lib/cni/bridge',
      '',
    ].join('\n'));
    chmodSync(join(dir, 'bin', 'gate-bridge'), 0o755);
    const gated = conf({ delegate: { type: 'gate-bridge', isGateway: true } });
    const cniPath = `${join(dir, 'bin')}:/usr/lib/cni`;
    const inFlight = call(served, { command: 'ADD', conf: gated, containerId: ctr('d'), netns: pods[3]!, cniPath });
    expect(await waitFor(() => existsSync(`${gate}.reached`), 20_000)).toBe(true);
    const pid = node.pid!;
    process.kill(pid, 'SIGTERM');
    expect(await waitFor(() => !existsSync(node.cniSocket), 10_000)).toBe(true);
    expect(alive(pid)).toBe(true);
    writeFileSync(gate, '');
    const add = await inFlight;
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(((add.json?.['ips'] ?? []) as unknown[]).length).toBe(1);
    expect(await waitFor(() => !alive(pid), 20_000)).toBe(true);
    await cluster.stopDaemon(node); // the harness notes the exit
    expect((await call(standalone, { command: 'DEL', conf: gated, containerId: ctr('d'), netns: pods[3]!, cniPath })).code).toBe(0);
    expect(store()).toEqual([]);
    await cluster.startDaemon(node);
    expect(await waitFor(() => existsSync(node.cniSocket), 10_000)).toBe(true);
  }, 120_000);

  it('serves from another mount namespace only what it sees as the runtime does, and nothing from another network namespace', async () => {
    // A runtime in its own mount namespace (unshare), seeing the same files: served.
    const unknown = { command: 'CHECK' as const, conf: conf(), containerId: `none-${id}`, netns: pods[0]! };
    const shared = await callCni({ path: 'unshare', env: served.env }, { ...unknown, nodeNs: node.ns, args: ['-m', served.path] });
    expect(shared.json, shared.stdout + shared.stderr).toMatchObject({ code: 3 });
    // Where the runtime has something mounted that flanneld does not see, flanneld declines ...
    const mountOver = join(dir, 'mount-over.sh');
    writeFileSync(mountOver, '#!/bin/sh\n# mount-over.sh DIR PROGRAM: a tmpfs on DIR, in this mount namespace only, then PROGRAM\nmount -t tmpfs none "$1" && shift && exec "$@"\n');
    chmodSync(mountOver, 0o755);
    const hidden = join(dir, 'hidden');
    mkdirSync(hidden);
    const inHidden = { ...unknown, conf: conf({ dataDir: join(hidden, 'flannel') }) };
    const declined = await callCni({ path: 'unshare', env: served.env }, { ...inHidden, nodeNs: node.ns, args: ['-m', mountOver, hidden, served.path] });
    expect(declined.json).toMatchObject({ code: 999 });
    expect(declined.json!['msg']).toMatch(new RegExp(`does not see ${hidden.replace(/[/.-]/g, '\\$&')}.* as the runtime does`));
    // ... and the standalone plugin answers in the runtime's view.
    const fellBack = await callCni({ path: 'unshare', env: standalone.env }, { ...inHidden, nodeNs: node.ns, args: ['-m', mountOver, hidden, standalone.path] });
    expect(fellBack.json, fellBack.stdout + fellBack.stderr).toMatchObject({ code: 3 });
    expect(fellBack.json!['msg']).toContain(join(hidden, 'flannel'));
    // State kept where flanneld cannot check it, from another mount namespace: declined.
    const otherIpam = await callCni({ path: 'unshare', env: served.env }, { ...unknown, conf: conf({ ipam: { type: 'static' } }), nodeNs: node.ns, args: ['-m', served.path] });
    expect(otherIpam.json!['msg']).toMatch(/IPAM type "static" keeps state it cannot check/);
    // A relative path means the runtime's working directory, which flanneld does not share.
    const relative = await call(served, { ...unknown, conf: conf({ dataDir: 'relative/flannel' }) });
    expect(relative.json!['msg']).toMatch(/relative path, "relative\/flannel"/);
    // Another network namespace: its delegates would run in the wrong one.
    const elsewhere = await callCni(served, { ...unknown });
    expect(elsewhere.json!['msg']).toMatch(/another network namespace/);
  }, 60_000);
});

describe.skipIf(!built)('the CNI socket', () => {
  const id = runId();
  const dir = join(tmpdir(), `cni-socket-${id}`);
  const open = join(dir, 'open'); // 0755: anyone may look, only root may write
  const log = silentLogger;

  beforeAll(() => {
    mkdirSync(open, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755);
    chmodSync(open, 0o755);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const canConnect = (path: string, asNobody = false): Promise<string> =>
    run([...(asNobody ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : []), process.execPath, '-e',
      "const s = require('net').connect(process.argv[1], () => { console.log('connected'); s.destroy(); }); s.on('error', (e) => console.log(e.code));", path,
    ], { allowFail: true }).then((r) => r.stdout.trim());

  it('is 0600 and root only, and goes when the server closes', async () => {
    const path = join(open, 'cni.sock');
    const server = await startCniServer({ path, log });
    try {
      const st = statSync(path);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.uid).toBe(0);
      expect(await canConnect(path)).toBe('connected');
      expect(await canConnect(path, true)).toBe('EACCES');
    } finally {
      await server.close();
    }
    expect(existsSync(path)).toBe(false);
  });

  it('refuses a directory others could write to or own, and a socket another process serves; takes over a dead one', async () => {
    const loose = join(dir, 'loose');
    mkdirSync(loose);
    chmodSync(loose, 0o777);
    await expect(startCniServer({ path: join(loose, 'cni.sock'), log })).rejects.toThrow(/writable by group or others \(mode 777\)/);
    const owned = join(dir, 'owned');
    mkdirSync(owned, { mode: 0o755 });
    await run(['chown', '65534', owned]);
    await expect(startCniServer({ path: join(owned, 'cni.sock'), log })).rejects.toThrow(/owned by uid 65534/);
    expect(existsSync(join(loose, 'cni.sock')) || existsSync(join(owned, 'cni.sock'))).toBe(false);

    const path = join(open, 'taken.sock');
    const first = await startCniServer({ path, log });
    try {
      await expect(startCniServer({ path, log })).rejects.toThrow(/another process serves/);
    } finally {
      await first.close();
    }
    // A socket whose server died without removing it.
    const dead = join(open, 'dead.sock');
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(dead)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    await killPid(child.pid!, 'SIGKILL');
    expect(statSync(dead).isSocket()).toBe(true);
    expect(await canConnect(dead)).toBe('ECONNREFUSED');
    const again = await startCniServer({ path: dead, log });
    try {
      expect(await canConnect(dead)).toBe('connected');
    } finally {
      await again.close();
    }
    // Something else at the path is never removed.
    writeFileSync(join(open, 'file.sock'), 'not a socket');
    await expect(startCniServer({ path: join(open, 'file.sock'), log })).rejects.toThrow(/exists and is not a socket/);
    expect(readFileSync(join(open, 'file.sock'), 'utf8')).toBe('not a socket');
    // The same holds with a server of another program at the path.
    const other = createServer();
    await new Promise<void>((resolve) => other.listen(join(open, 'other.sock'), resolve));
    try {
      await expect(startCniServer({ path: join(open, 'other.sock'), log })).rejects.toThrow(/another process serves/);
    } finally {
      other.close();
    }
  });

  it('a client copied out of its tree says so when flanneld cannot serve', async () => {
    const copy = join(dir, 'flannel');
    copyFileSync(repoPath('build', 'Release', 'flannel_cni'), copy);
    chmodSync(copy, 0o755);
    const res = await callCni({ path: copy, env: { FLANNEL_CNI_SOCKET: join(dir, 'absent.sock') } }, { command: 'VERSION', conf: {} });
    expect(res.code).toBe(1);
    expect(res.json).toMatchObject({ code: 999 });
    expect(res.json!['msg']).toMatch(/no socket at .*absent\.sock.*the standalone plugin could not be started: .*flannel: the client is not in a tree's build\/Release \(link it there, do not copy it\)/);
  });

  it('a daemon whose socket directory is unsafe logs it, runs without serving, and its client runs standalone', async () => {
    const cluster = await createCluster({ nodes: 1, config: { Network: '198.19.0.0/16', Backend: { Type: 'host-gw' } }, podsPerNode: 0, startDaemons: false });
    try {
      const node = cluster.nodes[0]!;
      const loose = join(dir, 'daemon-loose');
      mkdirSync(loose);
      chmodSync(loose, 0o777);
      await cluster.startDaemon(node, [`--cni-socket=${join(loose, 'cni.sock')}`]);
      expect(await waitFor(() => cluster.logTail(node, 100_000).includes('cannot serve the CNI plugin; the plugin runs standalone'), 10_000)).toBe(true);
      expect(cluster.logTail(node, 100_000)).toMatch(/writable by group or others/);
      expect(existsSync(join(loose, 'cni.sock'))).toBe(false);
      const version = await callCni({ path: repoPath('bin', 'flannel'), env: { FLANNEL_CNI_SOCKET: join(loose, 'cni.sock') } }, { command: 'VERSION', conf: { cniVersion: '0.4.0' }, nodeNs: node.ns });
      expect(version.json).toMatchObject({ cniVersion: '0.4.0' });
      // The daemon-only copy proves nothing served it: it fails, naming both failures.
      const copy = await callCni({ path: daemonOnlyClient(dir), env: { FLANNEL_CNI_SOCKET: join(loose, 'cni.sock') } }, { command: 'VERSION', conf: {}, nodeNs: node.ns });
      expect(copy.json!['msg']).toMatch(/no socket at .*cni\.sock/);
    } finally {
      await cluster.destroy();
    }
  }, 60_000);
});
