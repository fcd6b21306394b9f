// sd_notify through a real unix datagram socket: a small python receiver stands in for systemd (which
// is not PID 1 on this machine) and reports the datagram and the sender PID in its SCM_CREDENTIALS,
// which is what systemd uses to attribute the message to a unit.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { notifySystemd } from '../src/daemon/sdnotify.js';
import { runId } from './harness/netns.js';

// Like systemd: a BARRIER=1 datagram carries a file descriptor that the manager closes once it has
// processed everything before it; systemd-notify waits for that close.
const RECEIVER = `
import array, json, os, socket, struct, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\\0' + path[1:] if path.startswith('@') else path)
print('up', flush=True)
s.settimeout(10)
first = None
for _ in range(2):
    data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16 * 4))
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
    if text.strip() == 'BARRIER=1':
        break
    if first is None:
        first = {'data': text, 'pid': pid}
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

