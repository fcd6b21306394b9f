// Entry point of the flannel CNI plugin executable (bin/flannel): the container runtime sets CNI_*
// variables and writes the network configuration on stdin; the result or error goes to stdout.
import { readFileSync } from 'node:fs';
import { runPlugin } from './plugin.js';

function readStdin(): string {
  try {
    return readFileSync(0, 'utf8');
  } catch {
    return ''; // no stdin (e.g. a closed descriptor for VERSION)
  }
}

const out = await runPlugin(process.env, readStdin());
if (out.stderr) process.stderr.write(out.stderr);
process.exitCode = out.exitCode;
process.stdout.write(out.stdout);
