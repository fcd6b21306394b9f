import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Ip4Net } from '../src/common/ip4.js';
import { previousSubnet, readSubnetEnvFile, writeSubnetEnvFile } from '../src/subnet/envfile.js';
import { decodeLeaseAttrs, encodeLeaseAttrs } from '../src/subnet/lease.js';
import { MAX_KEY_NAME_CHARS, parseLeaseKey } from '../src/subnet/lease-store.js';
import { LeaseRejected } from '../src/subnet/lease-validation.js';
import { loadNodeIdentity, nodeIdentityPath } from '../src/subnet/node-identity.js';

// Values exactly as upstream flanneld v0.20.2 wrote them (shared/reference/upstream-wire-format.md).
const UPSTREAM_VXLAN = '{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:bd:17:d2:cf:1b"}}';
const UPSTREAM_UDP = '{"PublicIP":"198.18.0.2","PublicIPv6":null}';

describe('lease values in upstream JSON', () => {
  it('reads an upstream vxlan lease', () => {
    expect(decodeLeaseAttrs(UPSTREAM_VXLAN)).toEqual({
      publicIP: '198.18.0.2',
      publicIPv6: null,
      backend: { type: 'vxlan', vtep: { vni: 1, mac: 'f6:bd:17:d2:cf:1b' }, vtepV6: null },
    });
  });

  it('reads an upstream udp lease (no BackendType) as udp', () => {
    expect(decodeLeaseAttrs(UPSTREAM_UDP)).toEqual({ publicIP: '198.18.0.2', publicIPv6: null, backend: { type: 'udp' } });
  });

  it('writes byte-for-byte what upstream writes, so the round trip is exact', () => {
    expect(encodeLeaseAttrs(decodeLeaseAttrs(UPSTREAM_VXLAN))).toBe(UPSTREAM_VXLAN);
    expect(encodeLeaseAttrs(decodeLeaseAttrs(UPSTREAM_UDP))).toBe(UPSTREAM_UDP);
  });

  it.each([
    ['garbage', /not JSON/],
    ['[]', /not a JSON object/],
    ['{"PublicIPv6":null}', /PublicIP is missing/],
    ['{"PublicIP":"198.18.0.300"}', /PublicIP/],
    ['{"PublicIP":"198.18.0.2","BackendType":"ipsec"}', /not supported/],
    ['{"PublicIP":"198.18.0.2","BackendType":"vxlan","BackendData":"x"}', /BackendData/],
    ['{"PublicIP":"198.18.0.2","PublicIPv6":5}', /PublicIPv6/],
  ])('rejects %s with a reason', (value, reason) => {
    expect(() => decodeLeaseAttrs(value)).toThrow(reason);
  });

  it('parses subnet keys and refuses malformed ones', () => {
    expect(Ip4Net.fromKey('198.19.22.0-24').toString()).toBe('198.19.22.0/24');
    expect(Ip4Net.fromKey('198.19.22.0-24').toKey()).toBe('198.19.22.0-24');
    expect(() => Ip4Net.fromKey('198.19.22.0/24')).toThrow(/not a subnet key/);
    expect(() => Ip4Net.fromKey('198.19.22.5-24')).toThrow(/host bits/);
  });
});

describe('subnet env file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-env-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is written in upstream format, atomically, and read back', () => {
    const path = join(dir, 'sub', 'subnet.env');
    writeSubnetEnvFile(path, { networks: [Ip4Net.parse('198.19.0.0/16')], subnet: Ip4Net.parse('198.19.46.0/24'), mtu: 1450, ipMasq: false });
    expect(readFileSync(path, 'utf8')).toBe('FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.46.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n');
    expect(readdirSync(join(dir, 'sub'))).toEqual(['subnet.env']); // no temp file left behind
    const env = readSubnetEnvFile(path);
    expect(env.subnet.toString()).toBe('198.19.46.0/24');
    expect(env.mtu).toBe(1450);
    expect(previousSubnet(path)?.toString()).toBe('198.19.46.0/24');
  });

  it('reads an upstream udp env file and reports what is wrong with a bad one', () => {
    const path = join(dir, 'upstream.env');
    writeFileSync(path, 'FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.7.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n');
    expect(readSubnetEnvFile(path)).toMatchObject({ mtu: 1472, ipMasq: true });
    writeFileSync(path, 'FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_MTU=1472\n');
    expect(() => readSubnetEnvFile(path)).toThrow(/FLANNEL_SUBNET is missing/);
    expect(previousSubnet(join(dir, 'absent.env'))).toBeNull();
  });
});

describe('the node identity in lease values, and where it is kept', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-identity-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const ID = '0123456789abcdef0123456789abcdef';
  const OURS = `{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:bd:17:d2:cf:1b"},"NodeIdentity":"${ID}"}`;

  it('is written after upstream\'s fields and read back; a lease without one (upstream\'s) reads as before', () => {
    const attrs = decodeLeaseAttrs(OURS);
    expect(attrs.nodeIdentity).toBe(ID);
    expect(encodeLeaseAttrs(attrs)).toBe(OURS);
    expect(decodeLeaseAttrs(UPSTREAM_VXLAN).nodeIdentity).toBeUndefined();
    // Keys match case-insensitively, as Go's decoder matches them.
    expect(decodeLeaseAttrs(OURS.replace('NodeIdentity', 'nodeidentity')).nodeIdentity).toBe(ID);
  });

  it('refuses a NodeIdentity that is not 32 lower-case hex digits', () => {
    for (const bad of ['"ABC"', `"${ID.toUpperCase()}"`, '42', `"${ID} "`, '{}']) {
      const value = OURS.replace(`"${ID}"`, bad);
      expect(() => decodeLeaseAttrs(value), value).toThrow(LeaseRejected);
      try {
        decodeLeaseAttrs(value);
      } catch (err) {
        expect((err as LeaseRejected).reason).toBe('bad_node_identity');
      }
    }
  });

  it('is created once beside the env file, the same again from the same machine ID and path, and differs between directories', () => {
    const machineId = join(dir, 'machine-id');
    writeFileSync(machineId, '5f2bd1c2d4e0437f9a6a0c1b2d3e4f50\n');
    const a = nodeIdentityPath(join(dir, 'a', 'subnet.env'));
    const b = nodeIdentityPath(join(dir, 'b', 'subnet.env'));
    expect(a).toBe(join(dir, 'a', 'node-identity'));
    const first = loadNodeIdentity(a, machineId);
    expect(first.created).toBe(true);
    expect(first.identity).toMatch(/^[0-9a-f]{32}$/);
    expect(readFileSync(a, 'utf8')).toBe(`${first.identity}\n`);
    expect(loadNodeIdentity(a, machineId)).toEqual({ identity: first.identity, created: false });
    // /run emptied by a reboot: the same identity comes back.
    rmSync(a);
    expect(loadNodeIdentity(a, machineId).identity).toBe(first.identity);
    // Another node on the same host (its own env file directory): another identity.
    expect(loadNodeIdentity(b, machineId).identity).not.toBe(first.identity);
    // No machine ID: random, then kept.
    const c = nodeIdentityPath(join(dir, 'c', 'subnet.env'));
    const random = loadNodeIdentity(c, join(dir, 'no-such-file')).identity;
    expect(loadNodeIdentity(c, join(dir, 'no-such-file')).identity).toBe(random);
  });
});

describe('key names', () => {
  it(`a name longer than ${MAX_KEY_NAME_CHARS} characters is refused at once, and not kept whole`, () => {
    const name = 'k'.repeat(10_000);
    const parsed = parseLeaseKey(`/coreos.com/network/subnets/${name}`, name, '7');
    expect(parsed).toMatchObject({ code: 'key_too_long', subnet: null, modRevision: '7' });
    expect('key' in parsed && parsed.key.length).toBeLessThan(100);
    expect(parseLeaseKey('/p/198.19.5.0-24&2001:2:1:5::-64', '198.19.5.0-24&2001:2:1:5::-64', '7')).toMatchObject({ subnet: Ip4Net.parse('198.19.5.0/24') });
  });
});
