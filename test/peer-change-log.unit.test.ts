// How the vxlan and wireguard backends log a batch of lease events: one line per peer in a small
// batch, a large batch's additions at debug with one summary, changes always at info.
import { expect, it } from 'vitest';
import { PeerChangeLog } from '../src/backend/peer-change-log.js';
import { capturingLogger } from './harness/log-capture.js';

const said = (lines: Record<string, unknown>[]) => lines.map((l) => [l['level'], l['msg'], l['subnet'] ?? l['count']]);

it('a batch of up to 20 events: each peer on its own info line, no summary', () => {
  const { log, lines } = capturingLogger();
  const changes = new PeerChangeLog(log, 20);
  changes.changed('198.19.1.0/24', { subnet: '198.19.1.0/24' }, false);
  changes.changed('198.19.2.0/24', { subnet: '198.19.2.0/24' }, true);
  changes.done();
  expect(said(lines)).toEqual([[30, 'adding subnet', '198.19.1.0/24'], [30, 'updating subnet', '198.19.2.0/24']]);
});

it('a larger batch: additions at debug and summed up once at info; a change to a known peer still at info', () => {
  const { log, lines } = capturingLogger();
  const changes = new PeerChangeLog(log, 21);
  changes.changed('198.19.1.0/24', { subnet: '198.19.1.0/24' }, false);
  changes.changed('198.19.2.0/24', { subnet: '198.19.2.0/24' }, true);
  changes.changed('198.19.3.0/24', { subnet: '198.19.3.0/24' }, false);
  changes.done();
  expect(said(lines)).toEqual([
    [20, 'adding subnet', '198.19.1.0/24'],
    [30, 'updating subnet', '198.19.2.0/24'],
    [20, 'adding subnet', '198.19.3.0/24'],
    [30, 'adding subnets', 2],
  ]);
  expect(lines.at(-1)).toMatchObject({ first: '198.19.1.0/24', last: '198.19.3.0/24' });
});
