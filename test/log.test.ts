// Log formats: JSON lines with level names, and klog-shaped text, in-process and from the real daemon.
import { describe, expect, it } from 'vitest';
import { formatTextLine } from '../src/common/log.js';
import { repoPath } from '../testbed/cluster.js';
import { run } from '../testbed/netns.js';

describe('text log lines', () => {
  it('are shaped like klog: severity, MMDD, time, PID, component, message, key=value fields', () => {
    const time = new Date(2026, 11, 2, 4, 5, 6, 789).getTime();
    const line = formatTextLine(JSON.stringify({ level: 'warn', time, pid: 4242, name: 'flanneld', component: 'leases', msg: 'renewal failed; retrying', err: 'etcd: deadline exceeded', retryInMs: 500, ok: false }));
    expect(line).toBe('W1202 04:05:06.789000    4242 flanneld/leases] renewal failed; retrying err="etcd: deadline exceeded" retryInMs=500 ok=false\n');
    expect(formatTextLine(JSON.stringify({ level: 'info', time, pid: 1, name: 'flanneld', msg: 'ready', subnet: '198.19.5.0/24', list: ['a', 'b'] }))).toBe(
      'I1202 04:05:06.789000       1 flanneld] ready subnet=198.19.5.0/24 list=["a","b"]\n',
    );
    for (const [level, letter] of [['error', 'E'], ['fatal', 'F'], ['debug', 'I']]) {
      expect(formatTextLine(JSON.stringify({ level, time, pid: 1, msg: 'x' }))).toMatch(new RegExp(`^${letter}1202 `));
    }
    expect(formatTextLine('not json')).toBe('not json\n');
  });
});

describe('the daemon logs', () => {
  const flanneld = repoPath('bin', 'flanneld');
  const failing = ['--etcd-endpoints=http://127.0.0.1:1', '--iface=no-such-iface0'];

  it('JSON lines with level names by default', async () => {
    const res = await run([flanneld, ...failing], { allowFail: true, env: { FLANNELD_NOT_A_FLAG: 'x' } });
    expect(res.code).toBe(1);
    const lines = res.stderr.trim().split('\n').map((l) => JSON.parse(l) as { level: unknown; msg: string; name: string });
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'ignoring environment variables that name no flanneld flag: FLANNELD_NOT_A_FLAG'],
      ['fatal', 'cannot start'],
    ]);
    expect(lines.every((l) => l.name === 'flanneld')).toBe(true);
  });

  it('klog-like text with --log-format=text (or FLANNELD_LOG_FORMAT=text)', async () => {
    const ways: { args: string[]; env: Record<string, string> }[] = [{ args: ['--log-format=text'], env: {} }, { args: [], env: { FLANNELD_LOG_FORMAT: 'text' } }];
    for (const how of ways) {
      const res = await run([flanneld, ...failing, ...how.args], { allowFail: true, env: how.env });
      expect(res.code).toBe(1);
      expect(res.stderr).toMatch(/^F\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ flanneld\] cannot start err=.*no-such-iface0/m);
      expect(res.stderr).not.toContain('{"level"');
    }
  });
});
