// flannelctl: the operator's tool. Talks to the same etcd as flanneld, with the same flags and
// FLANNELD_* environment variables.
import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { silentLogger } from '../common/log.js';
import { normalizeGoStyleFlags } from '../common/cli.js';
import { VERSION } from '../common/version.js';
import { etcdOptionsFrom, withEtcdFlags } from '../etcd/flags.js';
import { EtcdRegistry } from '../etcd/registry.js';
import { ConfigError, type NetworkConfig, parseNetworkConfig } from '../subnet/config.js';
import { formatIp4 } from '../subnet/ip4.js';
import { formatIp6 } from '../subnet/ip6.js';
import { dockerOptsCommand } from './docker-opts.js';
import { type LeaseRow, renderLeaseTable, vtepMacOf } from './leases-table.js';

type EtcdArgs = Parameters<typeof etcdOptionsFrom>[0];

async function withRegistry<T>(argv: EtcdArgs, fn: (r: EtcdRegistry) => Promise<T>): Promise<T> {
  const registry = new EtcdRegistry(etcdOptionsFrom(argv), silentLogger);
  try {
    return await fn(registry);
  } finally {
    registry.close();
  }
}

/** Config text from the argument, `--file`, or stdin when the argument is "-". */
function configText(arg: string | undefined, file: string | undefined): string | undefined {
  if (file) return readFileSync(file, 'utf8');
  // yargs hands a lone "-" positional over as the empty string.
  if (arg === '-' || arg === '') return readFileSync(0, 'utf8');
  return arg;
}

function describeConfig(c: NetworkConfig): string {
  return JSON.stringify(
    {
      Network: c.network.toString(),
      SubnetLen: c.subnetLen,
      SubnetMin: formatIp4(c.subnetMin),
      SubnetMax: formatIp4(c.subnetMax),
      Backend: c.backend,
      ...(c.ipv6
        ? {
            EnableIPv6: true,
            IPv6Network: c.ipv6.network.toString(),
            IPv6SubnetLen: c.ipv6.subnetLen,
            IPv6SubnetMin: formatIp6(c.ipv6.subnetMin),
            IPv6SubnetMax: formatIp6(c.ipv6.subnetMax),
          }
        : {}),
    },
    null,
    2,
  );
}

function fail(message: string): never {
  process.stderr.write(`flannelctl: ${message}\n`);
  process.exit(1);
}

function validateOrFail(text: string): NetworkConfig {
  try {
    return parseNetworkConfig(text);
  } catch (err) {
    if (err instanceof ConfigError) fail(`${err.field}: ${err.reason}`);
    throw err;
  }
}

await withEtcdFlags(yargs(normalizeGoStyleFlags(process.argv.slice(2))))
  .scriptName('flannelctl')
  .env('FLANNELD')
  .command('config <action> [json]', 'get, set or validate the network config', (y) =>
    y
      .positional('action', { choices: ['get', 'set', 'validate'] as const, demandOption: true })
      .positional('json', { type: 'string', describe: 'config JSON, or - for stdin' })
      .option('file', { alias: 'f', type: 'string', describe: 'read the config from a file' })
      .option('force', { type: 'boolean', default: false, describe: 'set even if invalid' }),
    async (argv) => {
      const text = configText(argv.json, argv.file);
      if (argv.action === 'get') {
        const current = await withRegistry(argv, (r) => r.getConfig());
        if (current === null) fail(`no config at ${argv.etcdPrefix}/config`);
        process.stdout.write(current.endsWith('\n') ? current : current + '\n');
      } else if (argv.action === 'set') {
        if (text === undefined) fail('config set needs the JSON as an argument, --file, or - for stdin');
        if (!argv.force) validateOrFail(text);
        await withRegistry(argv, (r) => r.putConfig(text.trim()));
        process.stdout.write(`config written to ${argv.etcdPrefix}/config\n`);
      } else {
        const toCheck = text ?? (await withRegistry(argv, (r) => r.getConfig()));
        if (toCheck === null) fail(`no config at ${argv.etcdPrefix}/config`);
        process.stdout.write(`valid; effective config:\n${describeConfig(validateOrFail(toCheck))}\n`);
      }
    },
  )
  .command('leases', 'list every subnet lease', (y) => y.option('json', { type: 'boolean', default: false }), async (argv) => {
    await withRegistry(argv, async (r) => {
      const { records, invalid } = await r.listLeases();
      const rows: LeaseRow[] = await Promise.all(
        records.map(async (record) => ({ record, ttlSeconds: record.leaseId === null ? null : await r.leaseTimeToLive(record.leaseId) })),
      );
      if (argv.json) {
        const out = rows.map(({ record, ttlSeconds }) => ({
          subnet: record.subnet.toString(),
          ...(record.ipv6Subnet ? { ipv6Subnet: record.ipv6Subnet.toString(), publicIPv6: record.attrs.publicIPv6 } : {}),
          publicIP: record.attrs.publicIP,
          backendType: record.attrs.backendType,
          vtepMAC: vtepMacOf(record) === '-' ? null : vtepMacOf(record),
          ttlSeconds,
          reserved: ttlSeconds === null,
        }));
        // Subnets as "a.b.c.d/len", like the leases' (an Ip4Net would serialise as its uint32 fields).
        const bad = invalid.map(({ key, reason, subnet }) => ({ key, reason, subnet: subnet?.toString() ?? null }));
        process.stdout.write(JSON.stringify({ leases: out, invalid: bad }, null, 2) + '\n');
      } else {
        process.stdout.write(renderLeaseTable(rows, invalid));
      }
    });
  })
  .command(dockerOptsCommand)
  .demandCommand(1, 'name a command')
  .strict()
  .version(VERSION)
  .help()
  .fail((msg, err) => fail(err ? err.message : msg))
  .parseAsync();
process.exit(0);
