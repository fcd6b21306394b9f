import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Ip4Net } from '../src/common/ip4.js';
import { previousSubnet, readSubnetEnvFile, writeSubnetEnvFile } from '../src/subnet/envfile.js';
import { decodeLeaseAttrs, encodeLeaseAttrs } from '../src/subnet/lease.js';

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
