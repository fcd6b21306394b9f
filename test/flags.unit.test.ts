import { afterEach, describe, expect, it } from 'vitest';
import { normalizeGoStyleFlags } from '../src/common/cli.js';
import { FlagError, IGNORED_UPSTREAM_FLAGS, UNSUPPORTED_UPSTREAM_FLAGS, parseDaemonFlags } from '../src/daemon/flags.js';
import { repoPath } from '../testbed/cluster.js';
import { run } from '../testbed/netns.js';

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

describe("upstream's klog flags and environment", () => {
  it('accepts -v, --v, --vmodule, --log_backtrace_at and maps the verbosity to a log level', () => {
    expect(parseDaemonFlags([], {}).logLevel).toBe('info');
    expect(parseDaemonFlags(['--v=2', '--vmodule=main=3', '--log_backtrace_at=main.go:10', '-logtostderr'], {}).logLevel).toBe('debug');
    expect(parseDaemonFlags(['-v', '0'], {}).logLevel).toBe('info');
    expect(parseDaemonFlags(['-v=10'], {}).logLevel).toBe('trace');
    // An explicit --log-level wins over -v.
    expect(parseDaemonFlags(['-v=4', '--log-level=warn'], {}).logLevel).toBe('warn');
    expect(parseDaemonFlags([], { FLANNELD_V: '3' }).logLevel).toBe('debug');
    expect(() => parseDaemonFlags(['-v=x'], {})).toThrow(FlagError);
  });

  it('ignores FLANNELD_* variables that name no flag, with one warning naming them all', () => {
    const o = parseDaemonFlags([], { FLANNELD_NOT_A_FLAG: '1', FLANNELD_KUBE_SUBNET_MGR_X: 'y', FLANNELD_IP_MASQ: 'true', FLANNEL_NETWORK: '198.19.0.0/16' });
    expect(o.ipMasq).toBe(true);
    expect(o.warnings).toEqual(['ignoring environment variables that name no flanneld flag: FLANNELD_KUBE_SUBNET_MGR_X, FLANNELD_NOT_A_FLAG']);
    expect(parseDaemonFlags([], { FLANNELD_IP_MASQ: 'true' }).warnings).toEqual([]);
  });

  it("reads Fedora's FLANNEL_ETCD_ENDPOINTS / FLANNEL_ETCD_PREFIX (and the older FLANNEL_ETCD / FLANNEL_ETCD_KEY) when FLANNELD_* and flags leave them unset", () => {
    const fedora = { FLANNEL_ETCD_ENDPOINTS: 'http://198.18.0.1:2379', FLANNEL_ETCD_PREFIX: '/atomic.io/network' };
    expect(parseDaemonFlags([], fedora).etcd).toEqual({ endpoints: ['http://198.18.0.1:2379'], prefix: '/atomic.io/network' });
    expect(parseDaemonFlags([], { FLANNEL_ETCD: 'http://198.18.0.2:2379', FLANNEL_ETCD_KEY: '/old/network' }).etcd).toEqual({
      endpoints: ['http://198.18.0.2:2379'], prefix: '/old/network',
    });
    expect(parseDaemonFlags([], { ...fedora, FLANNELD_ETCD_PREFIX: '/coreos.com/network' }).etcd.prefix).toBe('/coreos.com/network');
    expect(parseDaemonFlags(['--etcd-endpoints=http://198.18.0.3:2379'], fedora).etcd.endpoints).toEqual(['http://198.18.0.3:2379']);
  });

  it('refuses every unsupported upstream flag, naming it and what to use instead', () => {
    for (const flag of Object.keys(UNSUPPORTED_UPSTREAM_FLAGS)) {
      expect(() => parseDaemonFlags([`--${flag}=x`], {}), flag).toThrow(new RegExp(`^--${flag} is not supported by this daemon: .+`));
    }
    expect(() => parseDaemonFlags(['--kube-subnet-mgr'], {})).toThrow(/--kube-subnet-mgr is not supported.*--etcd-endpoints/);
    expect(() => parseDaemonFlags([], { FLANNELD_KUBE_SUBNET_MGR: 'true' })).toThrow(/--kube-subnet-mgr is not supported/);
    // Turned off explicitly, it asks for nothing we lack.
    expect(parseDaemonFlags(['--kube-subnet-mgr=false'], {}).etcd.prefix).toBe('/coreos.com/network');
    expect(() => parseDaemonFlags(['--bogus-flag'], {})).toThrow(/Unknown arguments?: bogus-flag/);
  });

  it("accepts upstream's Kubernetes-only flags and their FLANNELD_* variables, as upstream does in etcd mode, with one warning each", () => {
    expect(Object.keys(IGNORED_UPSTREAM_FLAGS).sort()).toEqual(['kube-annotation-prefix', 'kube-api-url', 'kubeconfig-file', 'net-config-path', 'set-node-network-unavailable']);
    const o = parseDaemonFlags(
      ['-net-config-path=/etc/kube-flannel/net-conf.json', '--kubeconfig-file', '/etc/kubernetes/kubeconfig', '--set-node-network-unavailable=false', '--ip-masq'],
      { FLANNELD_KUBE_API_URL: 'https://198.18.0.254:6443', FLANNELD_KUBE_ANNOTATION_PREFIX: 'flannel.alpha.coreos.com' },
    );
    expect(o.ipMasq).toBe(true);
    expect(o.warnings).toEqual([
      'ignoring --kubeconfig-file: it only configures the Kubernetes subnet manager; leases are kept in etcd',
      'ignoring --kube-api-url: it only configures the Kubernetes subnet manager; leases are kept in etcd',
      'ignoring --kube-annotation-prefix: it only configures the Kubernetes subnet manager; leases are kept in etcd',
      'ignoring --set-node-network-unavailable: it only configures the Kubernetes subnet manager; leases are kept in etcd',
      'ignoring --net-config-path: in etcd mode the network config is read from etcd (<etcd-prefix>/config); store the file there with `flannelctl config set -f FILE`',
    ]);
    // The variable the DaemonSet sets (FLANNELD_NET_CONFIG_PATH) no longer stops the daemon.
    expect(parseDaemonFlags([], { FLANNELD_NET_CONFIG_PATH: '/etc/kube-flannel/net-conf.json' }).warnings).toEqual([expect.stringMatching(/^ignoring --net-config-path: /)]);
    // --set-node-network-unavailable is a boolean, as upstream's: it takes no word after it.
    expect(() => parseDaemonFlags(['--set-node-network-unavailable', 'false'], {})).toThrow(/Unknown argument: false/);
    expect(parseDaemonFlags([], {}).warnings).toEqual([]);
  });

  it('has --ip-masq-fully-random-disable and --ip-blackhole-route (off by default), and refuses an --iptables-resync under 1 s', () => {
    expect(parseDaemonFlags([], {})).toMatchObject({ ipMasqFullyRandomDisable: false, ipBlackholeRoute: false, iptablesResyncSeconds: 5 });
    expect(parseDaemonFlags(['--ip-masq-fully-random-disable', '-ip-blackhole-route', '--iptables-resync=1'], {})).toMatchObject({
      ipMasqFullyRandomDisable: true, ipBlackholeRoute: true, iptablesResyncSeconds: 1,
    });
    expect(parseDaemonFlags([], { FLANNELD_IP_BLACKHOLE_ROUTE: 'true', FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE: '1' })).toMatchObject({ ipMasqFullyRandomDisable: true, ipBlackholeRoute: true });
    expect(() => parseDaemonFlags(['--ip-blackhole-route=maybe'], {})).toThrow(/--ip-blackhole-route: "maybe" is not a boolean/);
    for (const bad of ['0', '0.5', '-1', '2.5']) {
      expect(() => parseDaemonFlags([`--iptables-resync=${bad}`], {}), bad).toThrow(new RegExp(`^--iptables-resync must be a whole number of seconds, at least 1 \\(got ${bad.replace('.', '\\.')}\\)`));
    }
  });

  it('has --log-format json|text and binds the health endpoint to loopback by default', () => {
    expect(parseDaemonFlags([], {})).toMatchObject({ logFormat: 'json', healthzIP: '127.0.0.1' });
    expect(parseDaemonFlags(['--log-format=text'], {}).logFormat).toBe('text');
    expect(() => parseDaemonFlags(['--log-format=xml'], {})).toThrow(/log-format/);
  });

  it('the flanneld command prints one clear line for a refused flag and exits 1', async () => {
    const res = await run(['node', repoPath('node_modules/tsx/dist/cli.mjs'), repoPath('src/daemon/main.ts'), '--kube-subnet-mgr'], { allowFail: true, timeoutMs: 30_000 });
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^flanneld: --kube-subnet-mgr is not supported by this daemon: /);
    expect(res.stderr).not.toContain('Options:');
  }, 40_000);
});
