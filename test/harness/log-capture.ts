// A logger whose lines tests can read back as objects, for assertions on what was said and how often.
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../src/common/log.js';

export function capturingLogger(level = 'debug'): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level }, sink), lines };
}
