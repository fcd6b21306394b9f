// flannelctl: the operator's tool. Talks to the same etcd as flanneld, with the same flags and
// FLANNELD_* environment variables (variables for daemon-only flags are ignored here).
import { terminalSafeJson } from '../common/printable.js';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import yargs from 'yargs';
import { flagsFromEnvironment, normalizeGoStyleFlags } from '../common/cli.js';
import { VERSION } from '../common/version.js';
import { ETCD_FLAGS, withEtcdFlags } from '../etcd/flags.js';
import { ConfigError, type NetworkConfig, checkNetworkConfig, formatNetworkConfig } from '../subnet/config.js';
import { dockerOptsCommand } from './docker-opts.js';
import { RELEASE_TTL_SECONDS, deleteLease, deleteOwnLeases, leaseToDelete, parseSubnetArg, releaseLease, reserveLease } from './lease-admin.js';
import { DEFAULT_SUBNET_FILE } from '../subnet/envfile.js';
import { cleanupNode, localAddresses } from './node-cleanup.js';
import { publicKeyOf, renderLeaseTable, vtepMacOf } from './leases-table.js';
import { withRegistry } from './session.js';
import { collectStatus, leaseRows, renderStatus } from './status.js';

/** Config text from the argument, `--file`, or stdin when the argument is "-". */
function configText(arg: string | undefined, file: string | undefined): string | undefined {
  if (file) return readFileSync(file, 'utf8');
  // yargs hands a lone "-" positional over as the empty string.
  if (arg === '-' || arg === '') return readFileSync(0, 'utf8');
  return arg;
}

function fail(message: string): never {
  process.stderr.write(`flannelctl: ${message}\n`);
  process.exit(1);
}

/** Validates, exiting with the field at fault; returns the config and the keys upstream would not know. */
function validateOrFail(text: string): { config: NetworkConfig; unknownKeys: string[] } {
  try {
    return checkNetworkConfig(text);
  } catch (err) {
    if (err instanceof ConfigError) fail(`${err.field}: ${err.reason}`);
    throw err;
  }
}

const unknownKeysMessage = (keys: string[]) =>
  `unknown key${keys.length > 1 ? 's' : ''} ${keys.map((k) => `"${k}"`).join(', ')} (misspelt? flanneld and upstream ignore ${keys.length > 1 ? 'them' : 'it'})`;

/** Asks on stderr and reads one line from stdin; true only for "y" or "yes". */
async function confirm(question: string): Promise<boolean> {
  process.stderr.write(`${question} [y/N] `);
  const rl = createInterface({ input: process.stdin });
  const answer = await new Promise<string>((resolve) => {
    rl.once('line', resolve);
    rl.once('close', () => resolve(''));
  });
  rl.close();
  return /^\s*y(es)?\s*$/i.test(answer);
}

const argv = normalizeGoStyleFlags(process.argv.slice(2));
// FLANNELD_ETCD_* as the daemon reads them; other FLANNELD_* variables belong to the daemon.
const fromEnv = flagsFromEnvironment(process.env, Object.keys(ETCD_FLAGS), argv);

await withEtcdFlags(yargs([...fromEnv.args, ...argv]))
  .scriptName('flannelctl')
  .command('config <action> [json]', 'get, set or validate the network config', (y) =>
    y
      .positional('action', { choices: ['get', 'set', 'validate'] as const, demandOption: true })
      .positional('json', { type: 'string', describe: 'config JSON, or - for stdin' })
      .option('file', { alias: 'f', type: 'string', describe: 'read the config from a file' })
      .option('force', { type: 'boolean', default: false, describe: 'set even if invalid or with unknown keys' }),
    async (args) => {
      const text = configText(args.json, args.file);
      if (args.action === 'get') {
        const current = await withRegistry(args, (r) => r.getConfig());
        if (current === null) fail(`no config at ${args.etcdPrefix}/config`);
        process.stdout.write(current.endsWith('\n') ? current : current + '\n');
      } else if (args.action === 'set') {
        if (text === undefined) fail('config set needs the JSON as an argument, --file, or - for stdin');
        if (!args.force) {
          const { unknownKeys } = validateOrFail(text);
          if (unknownKeys.length > 0) fail(`${unknownKeysMessage(unknownKeys)}; fix the config, or set it anyway with --force`);
        }
        await withRegistry(args, (r) => r.putConfig(text.trim()));
        process.stdout.write(`config written to ${args.etcdPrefix}/config\n`);
      } else {
        const toCheck = text ?? (await withRegistry(args, (r) => r.getConfig()));
        if (toCheck === null) fail(`no config at ${args.etcdPrefix}/config`);
        const { config, unknownKeys } = validateOrFail(toCheck);
        if (unknownKeys.length > 0) process.stderr.write(`flannelctl: warning: ${unknownKeysMessage(unknownKeys)}\n`);
        // Upstream's keys and spelling, so the output can be set again as it is.
        process.stdout.write(JSON.stringify(formatNetworkConfig(config), null, 2) + '\n');
        process.stderr.write('valid; above is the effective config, defaults filled in\n');
      }
    },
  )
  .command('leases', 'list every subnet lease', (y) => y.option('json', { type: 'boolean', default: false, describe: 'print JSON' }), async (args) => {
    await withRegistry(args, async (r) => {
      const { rows, invalid } = await leaseRows(r);
      if (args.json) {
        const out = rows.map(({ record, ttlSeconds }) => ({
          subnet: record.subnet.toString(),
          ...(record.ipv6Subnet ? { ipv6Subnet: record.ipv6Subnet.toString(), publicIPv6: record.attrs.publicIPv6 } : {}),
          publicIP: record.attrs.publicIP,
          backendType: record.attrs.backend.type,
          vtepMAC: vtepMacOf(record) === '-' ? null : vtepMacOf(record),
          ...(publicKeyOf(record) !== null ? { publicKey: publicKeyOf(record) } : {}),
          ttlSeconds,
          reserved: ttlSeconds === null,
        }));
        // Subnets as "a.b.c.d/len", like the leases' (an Ip4Net would serialise as its uint32 fields).
        const bad = invalid.map(({ key, reason, subnet }) => ({ key, reason, subnet: subnet?.toString() ?? null }));
        process.stdout.write(terminalSafeJson(JSON.stringify({ leases: out, invalid: bad }, null, 2)) + '\n');
      } else {
        process.stdout.write(renderLeaseTable(rows, invalid));
      }
    });
  })
  .command('lease <action> <subnet> [public-ip]', 'reserve, release or delete one subnet lease', (y) =>
    y
      .positional('action', { choices: ['reserve', 'release', 'delete'] as const, demandOption: true })
      .positional('subnet', { type: 'string', demandOption: true, describe: 'e.g. 198.19.5.0/24' })
      .positional('public-ip', { type: 'string', describe: 'reserve: the public IP of the node the subnet is kept for' })
      .option('ttl', { type: 'number', default: RELEASE_TTL_SECONDS, describe: 'release: seconds until the lease expires unless its node renews it' })
      .option('yes', { alias: 'y', type: 'boolean', default: false, describe: 'delete: do not ask for confirmation' }),
    async (args) => {
      const subnet = parseSubnetArg(args.subnet);
      if (args.action !== 'reserve' && args.publicIp !== undefined) fail(`lease ${args.action} takes no public IP`);
      await withRegistry(args, async (r) => {
        if (args.action === 'reserve') {
          if (args.publicIp === undefined) fail('lease reserve needs SUBNET and PUBLIC-IP');
          const outcome = await reserveLease(r, subnet, args.publicIp);
          const said = { created: 'reserved', converted: 'made permanent (reserved)', 'already reserved': 'already reserved' }[outcome];
          process.stdout.write(`${subnet} ${said} for ${args.publicIp}\n`);
        } else if (args.action === 'release') {
          if (!(args.ttl >= 10 && Number.isInteger(args.ttl))) fail('--ttl must be a whole number of seconds, at least 10');
          const record = await releaseLease(r, subnet, args.ttl);
          process.stdout.write(`${subnet} (${record.attrs.publicIP}) is no longer reserved: it expires in ${args.ttl} s unless its node renews it\n`);
        } else {
          const target = await leaseToDelete(r, subnet);
          if (!args.yes) {
            const ok = await confirm(`delete the lease of ${target.description}? A running node will claim a subnet again.`);
            if (!ok) fail('not deleted');
          }
          await deleteLease(r, target);
          process.stdout.write(`deleted the lease of ${target.description}\n`);
        }
      });
    },
  )
  .command('status', "every node's lease and, where reachable, its /readyz", (y) =>
    y
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
      .option('healthz-port', {
        type: 'number',
        default: Number(process.env['FLANNELD_HEALTHZ_PORT'] ?? 0) || 0,
        describe: "the nodes' flanneld --healthz-port (0: do not probe); they must listen on their public IP",
      })
      .option('timeout', { type: 'number', default: 1000, describe: 'milliseconds to wait for each /readyz' }),
    async (args) => {
      const { nodes, invalid } = await withRegistry(args, (r) => collectStatus(r, args.healthzPort, args.timeout));
      if (args.json) {
        const bad = invalid.map(({ key, reason, subnet }) => ({ key, reason, subnet: subnet?.toString() ?? null }));
        process.stdout.write(terminalSafeJson(JSON.stringify({ nodes, invalid: bad }, null, 2)) + '\n');
      } else {
        process.stdout.write(renderStatus(nodes, invalid));
      }
    },
  )
  .command('node <action>', 'this node: cleanup removes what flanneld made on it (stop flanneld first)', (y) =>
    y
      .positional('action', { choices: ['cleanup'] as const, demandOption: true })
      .option('subnet-file', { type: 'string', default: DEFAULT_SUBNET_FILE, describe: "flanneld's subnet env file (names the network of host-gw routes)" })
      .option('release-lease', { type: 'boolean', default: false, describe: "also delete this node's lease from etcd" })
      .option('cni-bin-dir', { type: 'string', default: '/opt/cni/bin', describe: 'where the flannel CNI plugin is linked (its copy: ../flanneld-ts)' })
      .option('cni-conf-dir', { type: 'string', default: '/etc/cni/net.d', describe: 'where the CNI conflist is' })
      .option('cni-data-dir', { type: 'string', default: '/var/lib/cni/flannel', describe: "the CNI plugin's saved state" }),
    async (args) => {
      const report = await cleanupNode({ subnetFile: args.subnetFile, cniBinDir: args.cniBinDir, cniConfDir: args.cniConfDir, cniDataDir: args.cniDataDir });
      for (const line of report.removed) process.stdout.write(`removed ${line}\n`);
      if (report.removed.length === 0) process.stdout.write('nothing of flanneld found on this node\n');
      if (args.releaseLease) {
        const own = await localAddresses();
        try {
          const deleted = await withRegistry(args, (r) => deleteOwnLeases(r, report.subnet, own));
          for (const line of deleted) process.stdout.write(`${line}\n`);
          if (deleted.length === 0) process.stdout.write('no lease of this node in etcd\n');
        } catch (err) {
          report.problems.push((err as Error).message);
        }
      }
      for (const line of report.notes) process.stderr.write(`flannelctl: note: ${line}\n`);
      if (report.problems.length > 0) fail(report.problems.join('\n  '));
    },
  )
  .command(dockerOptsCommand)
  .demandCommand(1, 'name a command')
  .strict()
  .version(VERSION)
  .help()
  .fail((msg, err) => fail(err ? err.message : msg))
  .parseAsync()
  .catch((err: unknown) => fail(err instanceof Error ? err.message : String(err)));
// Exit once stdout has drained: exiting at once cuts a large listing written to a pipe short. (Exit at
// all, because a closed etcd client can leave gRPC timers behind for a while.)
process.stdout.write('', () => process.exit(0));
