// sd_notify through a real unix datagram socket: a small python receiver stands in for systemd (which
// is not PID 1 on this machine) and reports the datagram and the sender PID in its SCM_CREDENTIALS,
// which is what systemd uses to attribute the message to a unit.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SystemdStatus, notifySystemd } from '../src/daemon/sdnotify.js';
import { repoPath } from '../testbed/cluster.js';
import { type EtcdServer, startEtcd } from '../testbed/etcd.js';
import { addLoneNodeNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

// Like systemd: a BARRIER=1 datagram carries a file descriptor that the manager closes once it has
// processed everything before it; systemd-notify waits for that close.
const RECEIVER = `
import array, json, os, socket, struct, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\\0' + path[1:] if path.startswith('@') else path)
print('up', flush=True)
every = len(sys.argv) > 2
s.settimeout(None if every else 10)
first = None
while True:
    try:
        data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16 * 4))
    except socket.timeout:
        break
    pid = None
    for level, typ, d in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', d[:12])[0]
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds = array.array('i')
            fds.frombytes(d[:len(d) - (len(d) % fds.itemsize)])
            for fd in fds:
                os.close(fd)
    text = data.decode()
    if every:
        print(json.dumps({'data': text, 'pid': pid}), flush=True)
        continue
    if text.strip() == 'BARRIER=1':
        break
    if first is None:
        first = {'data': text, 'pid': pid}
        # systemd-notify follows with a BARRIER=1 datagram; a direct sender sends nothing more.
        s.settimeout(0.5)
print(json.dumps(first), flush=True)
`;

const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

interface Received {
  data: string;
  pid: number | null;
}

/** Starts the receiver; `up` settles once its socket is bound, `message` with the first datagram. */
function startReceiver(path: string): { child: ChildProcess; up: Promise<void>; message: Promise<Received> } {
  const child = spawn(python, ['-c', RECEIVER, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const lines = new Promise<string[]>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const l = out.split('\n');
      if (l.length > 2) resolve(l);
    });
    child.on('exit', (code) => reject(new Error(`receiver exited ${code}: ${err}`)));
  });
  const up = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', () => out.startsWith('up\n') && resolve());
    child.on('exit', (code) => reject(new Error(`receiver exited ${code}: ${err}`)));
  });
  const message = lines.then((l) => JSON.parse(l[1]!) as Received);
  message.catch(() => {});
  return { child, up, message };
}

describe('notifySystemd', () => {
  let dir = '';
  const saved = process.env['NOTIFY_SOCKET'];
  let receiver: ChildProcess | null = null;

  afterEach(() => {
    if (receiver?.pid && receiver.exitCode === null) receiver.kill('SIGKILL');
    receiver = null;
    if (saved === undefined) delete process.env['NOTIFY_SOCKET'];
    else process.env['NOTIFY_SOCKET'] = saved;
  });
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'sdnotify-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('returns false when not run by systemd', async () => {
    delete process.env['NOTIFY_SOCKET'];
    expect(await notifySystemd('READY=1')).toBe(false);
  });

  it('sends READY=1 credited to this process over a path socket', async () => {
    const path = join(dir, 'notify');
    const r = startReceiver(path);
    receiver = r.child;
    await r.up;
    process.env['NOTIFY_SOCKET'] = path;
    expect(await notifySystemd('READY=1')).toBe(true);
    const got = await r.message;
    expect(got.data.split('\n')).toContain('READY=1');
    expect(got.pid).toBe(process.pid);
  });

  it('sends several assignments over an abstract socket', async () => {
    const path = `@flanneld-test-${runId()}`;
    const r = startReceiver(path);
    receiver = r.child;
    await r.up;
    process.env['NOTIFY_SOCKET'] = path;
    expect(await notifySystemd('READY=1\nSTATUS=subnet 198.19.5.0/24')).toBe(true);
    const got = await r.message;
    expect(got.data.split('\n')).toEqual(expect.arrayContaining(['READY=1', 'STATUS=subnet 198.19.5.0/24']));
    expect(got.pid).toBe(process.pid);
  });

  it('refuses malformed states and reports a missing socket as failure', async () => {
    process.env['NOTIFY_SOCKET'] = join(dir, 'nobody-listens');
    expect(await notifySystemd('not an assignment')).toBe(false);
    expect(await notifySystemd('READY=1')).toBe(false);
  });
});


/** A receiver that prints every datagram; `messages()` is what arrived so far. */
function startCollector(path: string, netns?: string): { child: ChildProcess; up: Promise<void>; messages: () => Received[] } {
  const argv = [python, '-c', RECEIVER, path, 'all'];
  const child = netns ? spawn('ip', ['netns', 'exec', netns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const up = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', () => out.startsWith('up\n') && resolve());
    child.on('exit', (code) => reject(new Error(`collector exited ${code}`)));
  });
  const messages = () => out.split('\n').slice(1).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Received);
  return { child, up, messages };
}

describe('systemd STATUS', () => {
  const saved = process.env['NOTIFY_SOCKET'];
  const collectors: ChildProcess[] = [];
  afterAll(() => {
    for (const c of collectors) if (c.exitCode === null) c.kill('SIGKILL');
    if (saved === undefined) delete process.env['NOTIFY_SOCKET'];
    else process.env['NOTIFY_SOCKET'] = saved;
  });

  it('is sent from this process (no helper) and still through systemd-notify when asked', async () => {
    const path = `@flanneld-status-${runId()}`;
    const c = startCollector(path);
    collectors.push(c.child);
    await c.up;
    process.env['NOTIFY_SOCKET'] = path;
    expect(await notifySystemd('STATUS=direct')).toBe(true);
    expect(await notifySystemd('STATUS=helper', { command: 'systemd-notify' })).toBe(true);
    expect(await waitFor(() => c.messages().some((m) => m.data.includes('STATUS=helper')), 10_000)).toBe(true);
    const direct = c.messages().find((m) => m.data === 'STATUS=direct\n')!;
    expect(direct.pid).toBe(process.pid);
    // The direct sender sends one datagram and no BARRIER: nothing else arrived before the helper's.
    expect(c.messages()[0]!.data).toBe('STATUS=direct\n');
  });

  it('SystemdStatus sends a status once, and again only when it changes', async () => {
    const sent: string[] = [];
    const status = new SystemdStatus(async (s) => {
      sent.push(s);
      return true;
    });
    status.set('waiting for etcd');
    status.set('waiting for etcd');
    status.set('no network config\nin etcd');
    status.set('waiting for etcd');
    expect(sent).toEqual(['STATUS=waiting for etcd', 'STATUS=no network config in etcd', 'STATUS=waiting for etcd']);
  });

  it('the daemon reports what it waits for, then READY=1 with its subnet', async () => {
    const ns = `fl-${runId()}-sdn`;
    const dir = mkdtempSync(join(tmpdir(), 'sdnotify-daemon-'));
    await addLoneNodeNetns(ns);
    let etcd: EtcdServer | null = null;
    let daemon: ChildProcess | null = null;
    try {
      etcd = await startEtcd({ netns: ns });
      const socketPath = join(dir, 'notify');
      const c = startCollector(socketPath, ns);
      collectors.push(c.child);
      await c.up;
      daemon = spawn('ip', ['netns', 'exec', ns, repoPath('bin/flanneld'), `--etcd-endpoints=${etcd.endpoint}`, '--iface=eth0',
        `--subnet-file=${join(dir, 'subnet.env')}`, `--cni-socket=${join(dir, 'cni.sock')}`, '--iptables-forward-rules=false'], { stdio: 'ignore', env: { ...process.env, NOTIFY_SOCKET: socketPath } });
      const statuses = () => c.messages().map((m) => m.data);
      expect(await waitFor(() => statuses().some((d) => d.startsWith('STATUS=no network config in etcd; waiting for one')), 20_000)).toBe(true);
      await run(['etcdctl', '--endpoints', etcd.endpoint, 'put', '/coreos.com/network/config', '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'], {
        netns: ns, env: { ETCDCTL_API: '3' },
      });
      expect(await waitFor(() => statuses().some((d) => d.startsWith('READY=1\n')), 20_000)).toBe(true);
      const ready = c.messages().find((m) => m.data.startsWith('READY=1\n'))!;
      expect(ready.data).toMatch(/^READY=1\nSTATUS=ready; subnet 198\.19\.\d+\.0\/24, vxlan backend\n$/);
      // Credited to the daemon itself (the ip netns exec wrapper execs it), not to a helper process.
      expect(ready.pid).toBe(daemon.pid);
      expect(statuses()[0]).toMatch(/^STATUS=starting; etcd http:/);
    } finally {
      if (daemon && daemon.exitCode === null) {
        const exited = new Promise((r) => daemon!.once('exit', r));
        daemon.kill('SIGTERM');
        await exited;
      }
      await etcd?.stop();
      await run(['ip', '-n', ns, 'link', 'del', 'flannel.1'], { allowFail: true });
      await delNetns(ns);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
