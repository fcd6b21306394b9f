// etcd3 asks its protobuf decoder for int64 fields (revisions, versions, lease IDs) as decimal
// strings. The decoder builds a `long` Long for each and calls Long#toString(10), which divides
// 64-bit values in software: at 5,000 leases that is 20,000 conversions, a fifth of a daemon's
// start-up CPU and much of its garbage. Nearly every such value fits in 53 bits, where a double
// holds it exactly and String() prints the same digits natively; BigInt does the rest (lease IDs
// are mostly above 2^53). This installs that on the Long class the decoder uses; other radixes go
// to the original method.
import { Long } from '@grpc/proto-loader';

/** The part of `long`'s Long class the fast path touches. */
export interface LongClass {
  prototype: { high: number; low: number; unsigned: boolean; toString(radix?: number): string };
}

const TWO_PWR_32 = 4_294_967_296;
/** |high| below 2^21: the value is within ±2^53, exact in a double. */
const SAFE_HIGH = 0x20_0000;
const INSTALLED = Symbol.for('flanneld.int64-fast-toString');

/** Installs the fast decimal toString on `Long`; idempotent. Returns the method it wraps. */
export function installFastDecimal(Long: LongClass): (this: LongClass['prototype'], radix?: number) => string {
  const proto = Long.prototype as LongClass['prototype'] & { [INSTALLED]?: (radix?: number) => string };
  const installed = proto[INSTALLED];
  if (installed) return installed;
  const original = proto.toString;
  proto.toString = function fastDecimalToString(this: LongClass['prototype'], radix?: number): string {
    if (radix !== undefined && radix !== 10) return original.call(this, radix);
    const high = this.unsigned ? this.high >>> 0 : this.high;
    if (high < SAFE_HIGH && high >= -SAFE_HIGH) return String(high * TWO_PWR_32 + (this.low >>> 0));
    // Beyond 2^53 (lease IDs mostly are): BigInt prints it natively too.
    const bits = (BigInt(this.high >>> 0) << 32n) | BigInt(this.low >>> 0);
    return (this.unsigned ? BigInt.asUintN(64, bits) : BigInt.asIntN(64, bits)).toString();
  };
  Object.defineProperty(proto, INSTALLED, { value: original });
  return original;
}

/**
 * The Long class etcd3's decoder uses. @grpc/proto-loader (which etcd3 loads its protos with) and
 * protobufjs both take `long` with require(); proto-loader re-exports the class it got. Imported
 * statically, so that in the bundled daemon (scripts/bundle.mjs) it is the bundled copy.
 */
export function decoderLongClass(): LongClass {
  return Long;
}

/** Installs the fast path on the decoder's Long class. */
export function speedUpInt64Strings(): void {
  installFastDecimal(Long);
}
