import { afterEach, describe, expect, it } from 'vitest';
import { normalizeGoStyleFlags } from '../src/common/cli.js';
import { parseDaemonFlags } from '../src/daemon/flags.js';

const saved = { ...process.env };
afterEach(() => {
  for (const k of Object.keys(process.env)) if (k.startsWith('FLANNELD_') && !(k in saved)) delete process.env[k];
});

describe('flanneld flags', () => {
  it("has upstream's defaults", () => {
    const o = parseDaemonFlags([]);
    expect(o.etcd).toEqual({ endpoints: ['http://127.0.0.1:4001', 'http://127.0.0.1:2379'], prefix: '/coreos.com/network' });
    expect(o).toMatchObject({ subnetFile: '/run/flannel/subnet.env', subnetLeaseRenewMarginMinutes: 60, ipMasq: false, iptablesForwardRules: true, healthzPort: 0, iface: [] });
  });

  it('keeps the last value of a repeated flag, as Go does, but collects every --iface', () => {
    const o = parseDaemonFlags([
      '--etcd-endpoints=http://198.18.0.251:2379', '--etcd-endpoints=http://198.18.0.252:2379,http://198.18.0.253:2379',
      '--iface', 'eth1', '--iface=198.18.0.1', '--healthz-port=1', '--healthz-port=8471', '--ip-masq', '--ip-masq=false',
    ]);
    expect(o.etcd.endpoints).toEqual(['http://198.18.0.252:2379', 'http://198.18.0.253:2379']);
    expect(o.iface).toEqual(['eth1', '198.18.0.1']);
    expect(o.healthzPort).toBe(8471);
    expect(o.ipMasq).toBe(false);
  });

  it('reads FLANNELD_* variables, with a comma list for FLANNELD_IFACE; flags win over them', () => {
    process.env['FLANNELD_ETCD_PREFIX'] = '/other/network';
    process.env['FLANNELD_IFACE'] = 'eth1,eth2';
    process.env['FLANNELD_SUBNET_LEASE_RENEW_MARGIN'] = '30';
    process.env['FLANNELD_HEALTHZ_PORT'] = '1234';
    const o = parseDaemonFlags(['--healthz-port=4321']);
    expect(o.etcd.prefix).toBe('/other/network');
    expect(o.iface).toEqual(['eth1', 'eth2']);
    expect(o.subnetLeaseRenewMarginMinutes).toBe(30);
    expect(o.healthzPort).toBe(4321);
  });

  it('accepts Go-style single-dash long flags and leaves values alone', () => {
    expect(normalizeGoStyleFlags(['-iface=eth0', '-ip-masq', '-v', '--log-level=debug', 'eth1', '-'])).toEqual([
      '--iface=eth0', '--ip-masq', '-v', '--log-level=debug', 'eth1', '-',
    ]);
  });
});
