// Every udp data-path counter the native addon defines (src/native/counters.h) appears on /metrics:
// a counter added in C++ without a Prometheus series fails here, not silently in production.
import { describe, expect, it } from 'vitest';
import { forwarderCounterNames } from '../src/backend/udp/native.js';
import { udpStatSeries } from '../src/daemon/metrics-daemon.js';

describe('udp counters on /metrics', () => {
  it('each counter of the addon has its series', () => {
    const series = udpStatSeries();
    const names = forwarderCounterNames();
    expect(names.length).toBeGreaterThan(20);
    expect(names.filter((n) => series[n] === undefined)).toEqual([]);
  });
});
