// The protocol between the compiled CNI client and flanneld (src/cni/protocol.ts), the host paths a
// request touches (src/cni/host-paths.ts), and the environment a served request's delegate gets.
import { describe, expect, it } from 'vitest';
import { delegateEnvironment } from '../src/cni/delegate.js';
import { HOST_LOCAL_DATA_DIR, hostPaths, pathsToFirstExisting } from '../src/cni/host-paths.js';
import { DEFAULT_DATA_DIR } from '../src/cni/netconf.js';
import {
  FRAME, PROTOCOL, ProtocolError, REQUEST_MAX_VARIABLES, decodeIdentities, decodeRequest, decodeResult, encodeFrame, encodeRequest, encodeResult, encodeStrings,
} from '../src/cni/protocol.js';
import { DEFAULT_SUBNET_FILE } from '../src/subnet/envfile.js';

const request = { protocol: PROTOCOL, netns: '4:4026531840', mntns: '4:4026531841', env: { CNI_COMMAND: 'ADD', CNI_PATH: '/opt/cni/bin', PATH: '/usr/bin' }, stdin: '{"name":"cbr0","type":"flannel"}' };

describe('the request frame', () => {
  it('decodes what the client encodes: fields, variables and stdin (which may hold NULs and any bytes)', () => {
    expect(decodeRequest(encodeRequest(request))).toEqual(request);
    const odd = { ...request, env: { CNI_ARGS: 'K8S_POD_NAME=a=b;IgnoreUnknown=1', CNI_EMPTY: '' }, stdin: 'x\0y\u00e9' };
    expect(decodeRequest(encodeRequest(odd))).toEqual(odd);
    const framed = encodeFrame(FRAME.request, encodeRequest(request));
    expect(framed[0]).toBe(0x51);
    expect(framed.readUInt32BE(1)).toBe(framed.length - 5);
  });

  it('decodes another version, which the daemon then declines rather than refuses', () => {
    expect(decodeRequest(encodeRequest({ ...request, protocol: 'flannel-cni/2' })).protocol).toBe('flannel-cni/2');
  });

  it('refuses what is not the protocol, naming the problem', () => {
    const cases: [Buffer, RegExp][] = [
      [Buffer.from('GET / HTTP/1.1\r\n\r\n'), /not a flannel CNI request/],
      [Buffer.from(''), /not a flannel CNI request/],
      [Buffer.from('flannel-cni/1\0'), /not terminated/],
      [Buffer.from('flannel-cni/1\0a\0b\0CNI_X=1'), /not terminated/],
      [Buffer.from('flannel-cni/1\0a\0\0{}'), /namespace fields are missing/],
      [Buffer.from('flannel-cni/1\0a\0b\0NOEQUALS\0\0{}'), /"NOEQUALS" is not NAME=value/],
      [Buffer.from('flannel-cni/1\0a\0b\x001X=2\0\0{}'), /is not NAME=value/],
      [Buffer.from(`flannel-cni/1\0a\0b\0${'V=1\0'.repeat(REQUEST_MAX_VARIABLES + 1)}\0{}`), /more than/],
    ];
    for (const [payload, msg] of cases) {
      let caught: unknown;
      try {
        decodeRequest(payload);
      } catch (err) {
        caught = err;
      }
      expect(caught, payload.toString('latin1')).toBeInstanceOf(ProtocolError);
      expect((caught as ProtocolError).code).toBe(6);
      expect((caught as ProtocolError).message).toMatch(msg);
    }
  });
});

describe('the other frames', () => {
  it('result: exit status, stdout and stderr', () => {
    const out = { exitCode: 1, stdout: '{"code":7}\n', stderr: 'a warning\n' };
    expect(decodeResult(encodeResult(out.exitCode, out.stdout, out.stderr))).toEqual(out);
    expect(() => decodeResult(Buffer.from([0, 0, 0, 1, 0]))).toThrow(/beyond the frame/);
  });

  it('paths and their identities, one for one', () => {
    expect(encodeStrings(['/a', '/b c']).toString()).toBe('/a\0/b c\0');
    expect(decodeIdentities(Buffer.from('1:2\0\0'), 2)).toEqual(['1:2', '']);
    expect(() => decodeIdentities(Buffer.from('1:2\0'), 2)).toThrow(/1 identities for 2 paths/);
    expect(() => decodeIdentities(Buffer.from('1:2'), 1)).toThrow(/not terminated/);
  });
});

describe('the host paths of a request', () => {
  const env = { CNI_COMMAND: 'ADD', CNI_NETNS: '/var/run/netns/cni-1', CNI_PATH: '/opt/cni/bin::/usr/lib/cni' };

  it('names the netns, the plugin directories, the subnet file, and the directories it writes', () => {
    expect(hostPaths(env, '{"name":"cbr0","type":"flannel"}')).toEqual({
      read: ['/var/run/netns/cni-1', '/opt/cni/bin', '/usr/lib/cni', DEFAULT_SUBNET_FILE],
      written: [DEFAULT_DATA_DIR, HOST_LOCAL_DATA_DIR],
      otherIpam: null,
    });
    const conf = { name: 'cbr0', subnetFile: '/run/x.env', dataDir: '/var/lib/x', ipam: { dataDir: '/var/lib/ipam' } };
    expect(hostPaths({ ...env, CNI_COMMAND: 'DEL', CNI_NETNS: '' }, JSON.stringify(conf))).toEqual({
      read: ['/opt/cni/bin', '/usr/lib/cni', '/run/x.env'], written: ['/var/lib/x', '/var/lib/ipam'], otherIpam: null,
    });
  });

  it('says when the IPAM keeps its state elsewhere', () => {
    expect(hostPaths(env, '{"name":"cbr0","ipam":{"type":"whereabouts"}}').otherIpam).toBe('whereabouts');
  });

  it('names none for what touches nothing: VERSION, a conf the plugin refuses', () => {
    const none = { read: [], written: [], otherIpam: null };
    expect(hostPaths({ CNI_COMMAND: 'VERSION' }, '{}')).toEqual(none);
    expect(hostPaths(env, '{"name": ')).toEqual(none);
    expect(hostPaths(env, '{"type":"flannel"}')).toEqual(none);
  });

  it('walks up to the first directory that exists', () => {
    const existing = new Set(['/', '/var', '/var/lib']);
    expect(pathsToFirstExisting('/var/lib/cni/flannel', (p) => existing.has(p))).toEqual(['/var/lib/cni/flannel', '/var/lib/cni', '/var/lib']);
    expect(pathsToFirstExisting('/var', (p) => existing.has(p))).toEqual(['/var']);
    expect(pathsToFirstExisting('/nothing/here', () => false)).toEqual(['/nothing/here', '/nothing', '/']);
  });
});

describe("a served request's delegate environment", () => {
  it("is the caller's CNI_* variables and PATH, with the standard directories appended once", () => {
    const env = delegateEnvironment({ CNI_COMMAND: 'ADD', CNI_ARGS: 'a=b', PATH: '/opt/bin:/usr/bin', HOME: '/root', LD_PRELOAD: '/tmp/x.so', http_proxy: 'http://p' });
    expect(env).toEqual({ CNI_COMMAND: 'ADD', CNI_ARGS: 'a=b', PATH: '/opt/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin' });
    expect(delegateEnvironment({ CNI_COMMAND: 'DEL' })['PATH']).toBe('/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  });
});
