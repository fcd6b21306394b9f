// The demo: a 3-node vxlan cluster in network namespaces, left running for a person to explore.
//   npx tsx testbed/demo.ts up    (scripts/demo.sh does the setup and build first)
//   npx tsx testbed/demo.ts down  removes everything recorded in .demo/
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createCluster, destroyFromState, ETCD_ENDPOINT, repoPath, type Cluster } from './cluster.js';
import { run, waitFor } from './netns.js';

const STATE_DIR = repoPath('.demo');
const CONFIG = { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } };

async function printPing(cluster: Cluster, fromNode: number, toNode: number): Promise<boolean> {
  const from = cluster.nodes[fromNode - 1]!.pods[0]!;
  const to = cluster.nodes[toNode - 1]!.pods[0]!;
  console.log(`\n$ ip netns exec ${from.ns} ping -c 3 ${to.ip}    # pod on node ${fromNode} -> pod on node ${toNode}`);
  const res = await run(['ping', '-n', '-c', '3', '-i', '0.3', '-W', '2', to.ip], { netns: from.ns, allowFail: true });
  process.stdout.write(res.stdout);
  return res.code === 0;
}

async function up(): Promise<void> {
  if (existsSync(join(STATE_DIR, 'cluster.json'))) {
    throw new Error(`a demo cluster is already up (state in ${STATE_DIR}); run: scripts/demo.sh down`);
  }
  console.log('Starting etcd and 3 flanneld nodes (vxlan backend) in network namespaces...');
  const cluster = await createCluster({ nodes: 3, config: CONFIG, stateDir: STATE_DIR });
  const pods = cluster.nodes.map((n) => n.pods[0]!);
  // Leases of the other nodes arrive within a moment of start-up.
  await waitFor(async () => (await Promise.all(pods.slice(1).map((p) => cluster.ping(pods[0]!, p.ip, { timeoutS: 1 })))).every(Boolean), 10_000, 0);

  console.log(`\n$ ip netns exec ${cluster.hubNs} ./bin/flannelctl --etcd-endpoints=${ETCD_ENDPOINT} leases`);
  const leases = await run([repoPath('bin', 'flannelctl'), `--etcd-endpoints=${ETCD_ENDPOINT}`, 'leases'], { netns: cluster.hubNs, allowFail: true });
  process.stdout.write(leases.stdout + leases.stderr);

  const ok = [await printPing(cluster, 1, 2), await printPing(cluster, 1, 3)];

  const lines = [
    '',
    'Nodes (namespace, underlay IP, pod):',
    ...cluster.nodes.map((n) => `  node ${n.index}: ${n.ns}  ${n.ip}  pod ${n.pods[0]!.ns} ${n.pods[0]!.ip}   log: ${n.logFile}`),
    '',
    'Step into a pod or a node:',
    `  ip netns exec ${pods[0]!.ns} bash        # then: ping ${pods[1]!.ip}`,
    `  ip netns exec ${cluster.nodes[0]!.ns} bash      # then: ip route; ip neigh show dev flannel.1; bridge fdb show dev flannel.1`,
    `  ip netns exec ${cluster.hubNs} ./bin/flannelctl --etcd-endpoints=${ETCD_ENDPOINT} leases`,
    '',
    'Tear everything down:',
    '  scripts/demo.sh down',
  ];
  console.log(lines.join('\n'));
  writeFileSync(join(STATE_DIR, 'README.txt'), lines.join('\n') + '\n');
  if (!ok.every(Boolean)) {
    console.error('\ndemo: some pings failed; see the daemon logs above');
    process.exitCode = 1;
  }
}

async function down(): Promise<void> {
  await destroyFromState(STATE_DIR);
  rmSync(STATE_DIR, { recursive: true, force: true });
  console.log('demo cluster removed');
}

const command = process.argv[2] ?? 'up';
if (command === 'up') await up();
else if (command === 'down') await down();
else {
  console.error('usage: demo.js up|down');
  process.exitCode = 2;
}
