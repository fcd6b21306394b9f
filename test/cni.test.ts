// The flannel CNI plugin, executed exactly as a container runtime executes it: an executable with
// CNI_* variables and the network config on stdin, inside the node's network namespace, delegating to
// Debian's containernetworking-plugins (bridge, host-local) in /usr/lib/cni. First against a subnet
// env file written by the test, then on a two-node vxlan cluster of real daemons with --ip-masq.
// Every test runs on both paths (test/harness/cni.ts): served by the node's flanneld through the
// compiled client, and standalone (the client falling back to Node), with the same assertions.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CNI_PATHS, type CniCall, type CniPlugin, type CniReply, callCni, cniBuilt, cniPlugin } from './harness/cni.js';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const built = cniBuilt('daemon') && cniBuilt('standalone');

function envFile(subnet: string, mtu: number, ipMasq: boolean): string {
  return `FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=${subnet}\nFLANNEL_MTU=${mtu}\nFLANNEL_IPMASQ=${ipMasq}\n`;
}

async function podAddress(ns: string): Promise<string | null> {
  const res = await run(['ip', '-json', 'addr', 'show', 'dev', 'eth0'], { netns: ns, allowFail: true });
  if (res.code !== 0) return null;
  const [link] = JSON.parse(res.stdout) as { addr_info: { family: string; local: string; prefixlen: number }[] }[];
  const a = link?.addr_info.find((x) => x.family === 'inet');
  return a ? `${a.local}/${a.prefixlen}` : null;
}

async function linkMtu(ns: string, dev: string): Promise<number | null> {
  const res = await run(['ip', '-json', 'link', 'show', 'dev', dev], { netns: ns, allowFail: true });
  if (res.code !== 0) return null;
  return (JSON.parse(res.stdout) as { mtu: number }[])[0]?.mtu ?? null;
}

function ipsOf(result: Record<string, unknown> | null): string[] {
  const ips = (result?.['ips'] ?? []) as { address: string }[];
  return ips.map((i) => i.address);
}

describe.skipIf(!built).each(CNI_PATHS)('flannel CNI plugin (%s path, env file written by the test)', (cniPath) => {
  const id = runId();
  // The daemon path needs a flanneld in the node: a one-node host-gw cluster (its own lease and env
  // file are not what the plugin reads here: the conf names the test's). Standalone: a bare namespace.
  let cluster: Cluster | null = null;
  let node = `cni-node-${id}`;
  let plugin: CniPlugin;
  const cni = (call: CniCall): Promise<CniReply> => callCni(plugin, call);
  const pods = [`cni-pod-${id}-a`, `cni-pod-${id}-b`, `cni-pod-${id}-c`];
  // Made in beforeAll, not here: describe bodies also run when the tests are filtered out.
  const dir = join(tmpdir(), `cni-${id}`);
  const subnetFile = join(dir, 'subnet.env');
  const dataDir = join(dir, 'flannel');
  const ipamDir = join(dir, 'ipam');
  const conf = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    cniVersion: '1.0.0',
    name: `flnet-${id}`,
    type: 'flannel',
    subnetFile,
    dataDir,
    ipam: { dataDir: ipamDir },
    ...extra,
  });

  beforeAll(async () => {
    mkdirSync(dir);
    if (cniPath === 'daemon') {
      cluster = await createCluster({ nodes: 1, config: { Network: '198.19.0.0/16', Backend: { Type: 'host-gw' } }, podsPerNode: 0 });
      node = cluster.nodes[0]!.ns;
      plugin = cniPlugin(cniPath, cluster.nodes[0]!.cniSocket, dir);
    } else {
      await addNetns(node);
      plugin = cniPlugin(cniPath, '', dir);
    }
    for (const p of pods) await addNetns(p);
    writeFileSync(subnetFile, envFile('198.19.33.1/24', 1450, false));
  }, 60_000);
  afterAll(async () => {
    for (const p of pods) await delNetns(p);
    if (cluster) await cluster.destroy();
    else await delNetns(node);
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers VERSION with the versions it supports', async () => {
    for (const v of ['1.0.0', '0.4.0']) {
      const r = await cni({ command: 'VERSION', conf: { cniVersion: v }, nodeNs: node });
      expect(r.code).toBe(0);
      expect(r.json).toEqual({ cniVersion: v, supportedVersions: ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0'] });
    }
  });

  it('reports bad invocations as CNI errors on stdout with a non-zero exit', async () => {
    const add = { command: 'ADD' as const, containerId: `bad-${id}`, netns: pods[0]!, nodeNs: node };
    const cases: { call: CniCall; code: number; msg: RegExp }[] = [
      { call: { command: 'ADD', conf: conf(), nodeNs: node }, code: 4, msg: /CNI_CONTAINERID,CNI_NETNS/ },
      { call: { ...add, conf: '{"cniVersion": "1.0.0", "name": ' }, code: 6, msg: /failed to load netconf/ },
      { call: { ...add, conf: { cniVersion: '1.0.0', type: 'flannel' } }, code: 7, msg: /"name"/ },
      { call: { ...add, conf: conf({ cniVersion: '9.9.9' }) }, code: 1, msg: /incompatible CNI versions/ },
      { call: { ...add, conf: conf({ subnetFile: join(dir, 'absent.env') }) }, code: 11, msg: /absent\.env does not exist: is flanneld running/ },
      { call: { ...add, conf: conf({ delegate: { name: 'x' } }) }, code: 7, msg: /must not have 'name'/ },
      { call: { ...add, conf: conf({ delegate: { ipam: {} } }) }, code: 7, msg: /must not have 'ipam'/ },
      { call: { ...add, conf: conf({ delegate: { type: 'no-such-plugin' } }) }, code: 7, msg: /failed to find plugin "no-such-plugin"/ },
      { call: { ...add, containerId: '../escape', conf: conf() }, code: 4, msg: /invalid CNI_CONTAINERID/ },
      { call: { ...add, command: 'CHECK', conf: conf({ cniVersion: '0.3.1' }) }, code: 1, msg: /does not allow CHECK/ },
      { call: { ...add, command: 'CHECK', conf: conf() }, code: 3, msg: /not added by this plugin/ },
      { call: { ...add, command: 'VERSIONX' as 'VERSION', conf: conf() }, code: 4, msg: /unknown CNI_COMMAND/ },
    ];
    for (const c of cases) {
      const r = await cni(c.call);
      expect(r.code, JSON.stringify(c.call.conf)).not.toBe(0);
      expect(r.json, r.stdout).toMatchObject({ code: c.code });
      expect(r.json!['msg']).toMatch(c.msg);
      expect(typeof r.json!['cniVersion']).toBe('string');
    }
    // An env file without the MTU names what is missing.
    const partial = join(dir, 'partial.env');
    writeFileSync(partial, 'FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.33.1/24\nFLANNEL_IPMASQ=false\n');
    const r = await cni({ ...add, conf: conf({ subnetFile: partial }) });
    expect(r.json).toMatchObject({ code: 7 });
    expect(r.json!['msg']).toMatch(/partial\.env is missing FLANNEL_MTU/);
    // Nothing was left behind by the failed ADDs.
    expect(existsSync(join(ipamDir, `flnet-${id}`, '198.19.33.2'))).toBe(false);
  });

  it('ADD, CHECK and DEL through bridge + host-local, for CNI 1.0.0 and 0.4.0', async () => {
    const store = join(ipamDir, `flnet-${id}`);
    const results: Record<string, unknown>[] = [];
    for (const [k, version] of (['1.0.0', '0.4.0'] as const).entries()) {
      const call = { containerId: `ctr-${id}-${k}`, netns: pods[k]!, nodeNs: node };
      const add = await cni({ ...call, command: 'ADD', conf: conf({ cniVersion: version }) });
      expect(add.code, add.stdout + add.stderr).toBe(0);
      expect(add.json!['cniVersion']).toBe(version);
      const [address] = ipsOf(add.json);
      expect(address).toBe(`198.19.33.${2 + k}/24`);
      expect(await podAddress(pods[k]!)).toBe(address);
      expect(await linkMtu(pods[k]!, 'eth0')).toBe(1450);
      expect(readFileSync(join(store, `198.19.33.${2 + k}`), 'utf8')).toContain(`ctr-${id}-${k}`);
      // The saved delegate conf is what upstream's plugin would have built.
      expect(JSON.parse(readFileSync(join(dataDir, `ctr-${id}-${k}`), 'utf8'))).toEqual({
        cniVersion: version,
        name: `flnet-${id}`,
        type: 'bridge',
        ipMasq: true,
        mtu: 1450,
        isGateway: true,
        ipam: { dataDir: ipamDir, type: 'host-local', ranges: [[{ subnet: '198.19.33.0/24' }]], routes: [{ dst: '198.19.0.0/16', gw: '198.19.33.1' }] },
      });
      const route = await run(['ip', 'route', 'get', '198.19.77.1'], { netns: pods[k]! });
      expect(route.stdout).toContain('via 198.19.33.1');

      const check = await cni({ ...call, command: 'CHECK', conf: conf({ cniVersion: version, prevResult: add.json }) });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      results.push(add.json!);
    }
    // The two pods share the node's bridge cni0 (gateway 198.19.33.1).
    const ping = await run(['ping', '-c', '1', '-W', '2', '198.19.33.3'], { netns: pods[0]!, allowFail: true });
    expect(ping.code).toBe(0);

    // CHECK notices a pod whose address went away.
    await run(['ip', 'addr', 'flush', 'dev', 'eth0'], { netns: pods[1]! });
    const broken = await cni({ containerId: `ctr-${id}-1`, netns: pods[1]!, nodeNs: node, command: 'CHECK', conf: conf({ cniVersion: '0.4.0', prevResult: results[1] }) });
    expect(broken.code).not.toBe(0);
    expect(broken.json!['msg']).toMatch(/failed to delegate check/);

    for (const k of [0, 1]) {
      const call = { containerId: `ctr-${id}-${k}`, netns: pods[k]!, nodeNs: node };
      const del = await cni({ ...call, command: 'DEL', conf: conf({ cniVersion: k === 0 ? '1.0.0' : '0.4.0' }) });
      expect(del.code, del.stdout + del.stderr).toBe(0);
      expect(existsSync(join(store, `198.19.33.${2 + k}`))).toBe(false);
      expect(existsSync(join(dataDir, `ctr-${id}-${k}`))).toBe(false);
      expect(await podAddress(pods[k]!)).toBeNull();
      // A second DEL (runtimes retry) succeeds too.
      expect((await cni({ ...call, command: 'DEL', conf: conf() })).code).toBe(0);
    }
    expect(readdirSync(store).filter((f) => f.startsWith('198.'))).toEqual([]);
  });

  it('honours a delegate object and reports a pod left behind by a subnet change', async () => {
    const call = { containerId: `ctr-${id}-d`, netns: pods[2]!, nodeNs: node };
    const c = conf({ delegate: { bridge: `br${id}`, mtu: 1400, hairpinMode: true, ipMasq: false } });
    const add = await cni({ ...call, command: 'ADD', conf: c });
    expect(add.code, add.stdout + add.stderr).toBe(0);
    expect(await linkMtu(pods[2]!, 'eth0')).toBe(1400);
    expect(await linkMtu(node, `br${id}`)).not.toBeNull();
    const saved = JSON.parse(readFileSync(join(dataDir, `ctr-${id}-d`), 'utf8')) as Record<string, unknown>;
    expect(saved).toMatchObject({ bridge: `br${id}`, mtu: 1400, hairpinMode: true, ipMasq: false, isGateway: true });
    // No masquerade rules from the bridge plugin (flanneld would do it).
    expect((await run(['iptables-save', '-t', 'nat'], { netns: node })).stdout).not.toContain(`ctr-${id}-d`);

    // The node got another subnet: the pod's address is stale and CHECK says so.
    writeFileSync(subnetFile, envFile('198.19.34.1/24', 1450, false));
    const check = await cni({ ...call, command: 'CHECK', conf: { ...c, prevResult: add.json } });
    expect(check.json).toMatchObject({ code: 100 });
    expect(check.json!['msg']).toMatch(/198\.19\.33\.0\/24.*now 198\.19\.34\.0\/24/);
    // DEL works from the saved conf even though the env file changed, then without any env file.
    rmSync(subnetFile);
    const del = await cni({ ...call, command: 'DEL', conf: c });
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(readdirSync(join(ipamDir, `flnet-${id}`)).filter((f) => f.startsWith('198.'))).toEqual([]);
    writeFileSync(subnetFile, envFile('198.19.33.1/24', 1450, false));
  });
});

describe.skipIf(!built).each(CNI_PATHS)('flannel CNI plugin (%s path) on a two-node vxlan cluster with --ip-masq', (cniPath) => {
  let cluster: Cluster | null = null;
  const id = runId();
  const podNs = [`cnic-${id}-p1`, `cnic-${id}-p2`];
  const listeners: ChildProcess[] = [];
  const dir = join(tmpdir(), `cni-cluster-${id}`);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const conf = (node: ClusterNode): Record<string, unknown> => ({
    cniVersion: '1.0.0',
    name: `flc-${id}`,
    type: 'flannel',
    subnetFile: node.subnetFile,
    dataDir: join(dir, `n${node.index}`, 'flannel'),
    ipam: { dataDir: join(dir, `n${node.index}`, 'ipam') },
    // As in deploy/kubernetes/kube-flannel.yml: pods also get a default route through the bridge.
    delegate: { hairpinMode: true, isDefaultGateway: true },
  });
  const podIps: string[] = [];
  /** The plugin as the runtime of `node` runs it. */
  const cni = (node: ClusterNode, call: CniCall): Promise<CniReply> => callCni(cniPlugin(cniPath, node.cniSocket, dir), { ...call, nodeNs: node.ns });

  /** A TCP listener in `ns` that replies with the source address it sees. */
  async function listen(ns: string): Promise<void> {
    const script = `require('net').createServer((s) => s.end(s.remoteAddress + '\\n')).listen(${port}, '0.0.0.0', () => console.log('up'));`;
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    listeners.push(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`listener in ${ns} exited ${code}`)));
    });
  }

  async function sourceSeen(fromNs: string, dst: string): Promise<string> {
    const res = await run(['timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/${dst}/${port}; cat <&3`], { netns: fromNs, allowFail: true });
    return res.stdout.trim();
  }

  beforeAll(async () => {
    mkdirSync(dir);
    cluster = await createCluster({ nodes: 2, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } }, podsPerNode: 0, daemonArgs: ['--ip-masq'] });
    for (const ns of podNs) await addNetns(ns);
  }, 60_000);

  afterAll(async () => {
    for (const l of listeners) if (l.pid && l.exitCode === null) l.kill('SIGKILL');
    for (const ns of podNs) await delNetns(ns);
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('ADD gives each pod an address from its node subnet; pods on different nodes reach each other', async () => {
    const c = cluster!;
    for (const [k, node] of c.nodes.entries()) {
      const env = await node.env();
      expect(env['FLANNEL_IPMASQ']).toBe('true');
      const add = await cni(node, { command: 'ADD', conf: conf(node), containerId: `ctr-${id}-${k}`, netns: podNs[k]! });
      expect(add.code, add.stdout + add.stderr + c.logTail(node)).toBe(0);
      const [address] = ipsOf(add.json);
      const subnet = env['FLANNEL_SUBNET']!; // e.g. 198.19.46.1/24: the pod gets .2
      expect(address).toBe(subnet.replace(/\.1\//, '.2/'));
      expect(await linkMtu(podNs[k]!, 'eth0')).toBe(Number(env['FLANNEL_MTU']));
      podIps.push(address!.split('/')[0]!);
      const check = await cni(node, { command: 'CHECK', conf: { ...conf(node), prevResult: add.json }, containerId: `ctr-${id}-${k}`, netns: podNs[k]! });
      expect(check.code, check.stdout).toBe(0);
    }
    const reachable = await waitFor(async () => (await run(['ping', '-c', '1', '-W', '1', podIps[1]!], { netns: podNs[0]!, allowFail: true })).code === 0, 10_000, 200);
    expect(reachable).toBe(true);
    expect((await run(['ping', '-c', '2', '-i', '0.2', '-W', '2', podIps[0]!], { netns: podNs[1]!, allowFail: true })).code).toBe(0);
  });

  it('masquerades pod traffic leaving the network (flanneld rules), not pod-to-pod traffic', async () => {
    const c = cluster!;
    await listen(c.hubNs);
    await listen(podNs[1]!);
    const node1 = c.nodes[0]!;
    const masqCount = async (): Promise<number> => {
      const out = (await run(['iptables', '-t', 'nat', '-L', 'FLANNEL-POSTRTG', '-v', '-x', '-n'], { netns: node1.ns })).stdout;
      const line = out.split('\n').find((l) => l.includes('MASQUERADE') && l.includes('!224.0.0.0/4'));
      return Number(line?.trim().split(/\s+/)[0] ?? NaN);
    };
    const before = await masqCount();
    expect(before).not.toBeNaN();
    // The hub (198.18.0.254) is outside the flannel network: it sees node 1's underlay address.
    expect(await sourceSeen(podNs[0]!, '198.18.0.254')).toBe(node1.ip);
    expect(await masqCount()).toBeGreaterThan(before);
    // The pod on node 2 sees the pod's own address.
    expect(await sourceSeen(podNs[0]!, podIps[1]!)).toBe(podIps[0]);
    // The bridge plugin added no masquerade of its own (flanneld does it: ipMasq is false in the delegate).
    expect((await run(['iptables-save', '-t', 'nat'], { netns: node1.ns })).stdout).not.toContain(`ctr-${id}-0`);
  });

  it('DEL releases the addresses', async () => {
    const c = cluster!;
    for (const [k, node] of c.nodes.entries()) {
      const store = join(dir, `n${node.index}`, 'ipam', `flc-${id}`);
      expect(existsSync(join(store, podIps[k]!))).toBe(true);
      const del = await cni(node, { command: 'DEL', conf: conf(node), containerId: `ctr-${id}-${k}`, netns: podNs[k]! });
      expect(del.code, del.stdout + del.stderr).toBe(0);
      expect(existsSync(join(store, podIps[k]!))).toBe(false);
      expect(await podAddress(podNs[k]!)).toBeNull();
    }
  });
});
