// Overlapping lease events for one peer (a slow on-link lookup): the one begun last decides.
import { expect, test } from 'vitest';
import { LatestEvent } from '../src/backend/latest-event.js';

test('the event begun last decides; a removal makes every event in flight for the key stale', () => {
  const latest = new LatestEvent();
  const a = latest.begin('198.19.2.0/24');
  const b = latest.begin('198.19.2.0/24');
  const other = latest.begin('198.19.3.0/24');
  expect(latest.isLatest('198.19.2.0/24', a)).toBe(false);
  expect(latest.isLatest('198.19.2.0/24', b)).toBe(true);
  expect(latest.isLatest('198.19.3.0/24', other)).toBe(true);
  latest.forget('198.19.2.0/24');
  expect(latest.isLatest('198.19.2.0/24', b)).toBe(false);
  expect(latest.isLatest('198.19.3.0/24', other)).toBe(true);
});
