// The fast decimal Long#toString that etcd3's decoder uses for int64 fields: same digits as the
// original for every value (signed and unsigned, around the 2^53 edge, random), and installed on
// the very Long class protobufjs decodes into.
import { createRequire } from 'node:module';
import { describe, expect, test } from 'vitest';
import { decoderLongClass, installFastDecimal, type LongClass } from '../src/etcd/int64-strings.js';

interface LongStatic extends LongClass {
  fromBits(low: number, high: number, unsigned?: boolean): LongClass['prototype'];
  fromString(s: string, unsigned?: boolean): LongClass['prototype'];
}

const Long = decoderLongClass() as LongStatic;

describe('fast decimal int64 strings', () => {
  test("the Long class found is the one etcd3's protobuf decoder uses", () => {
    let require = createRequire(import.meta.url);
    for (const link of ['etcd3', '@grpc/proto-loader']) require = createRequire(require.resolve(link));
    const protobuf = require('protobufjs') as { util: { Long: unknown } };
    expect(protobuf.util.Long).toBe(Long);
  });

  test('prints the same digits as the original for edge and random values, signed and unsigned', () => {
    const original = installFastDecimal(Long);
    const edges = ['0', '1', '-1', '9007199254740991', '9007199254740992', '9007199254740993', '-9007199254740992', '-9007199254740993',
      '4294967295', '4294967296', '-4294967296', '9223372036854775807', '-9223372036854775808', '7587879387593014546'];
    const values = edges.flatMap((s) => [Long.fromString(s, false), ...(s.startsWith('-') ? [] : [Long.fromString(s, true)])]);
    let x = 0x9e3779b9;
    const next = (): number => ((x = (x ^ (x << 13)) >>> 0), (x = (x ^ (x >>> 17)) >>> 0), (x = (x ^ (x << 5)) >>> 0), x | 0);
    for (let i = 0; i < 20_000; i++) {
      // High words of every size: near zero (the common case), near the 2^21 edge, anywhere.
      const high = i % 3 === 0 ? next() >> 20 : i % 3 === 1 ? (0x1f_fff0 + (next() & 0x1f)) * (next() < 0 ? -1 : 1) : next();
      values.push(Long.fromBits(next(), high, i % 2 === 0));
    }
    let fast = 0;
    for (const v of values) {
      const want = original.call(v, 10);
      expect(v.toString(), `${v.high}:${v.low}:${v.unsigned}`).toBe(want);
      expect(v.toString(10)).toBe(want);
      expect(v.toString(16)).toBe(original.call(v, 16));
      if (BigInt(want) >= -(2n ** 53n) && BigInt(want) <= 2n ** 53n) fast++;
    }
    expect(fast).toBeGreaterThan(5_000); // the safe range was really exercised
  });

  test('installing twice wraps once', () => {
    const first = installFastDecimal(Long);
    const method = Long.prototype.toString;
    expect(installFastDecimal(Long)).toBe(first);
    expect(Long.prototype.toString).toBe(method);
  });
});
