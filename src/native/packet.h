// IPv4/TCP header access and Internet checksums for the udp data path.
// Packets sit at arbitrary offsets in I/O buffers, so every multi-byte field goes through memcpy
// (compiled to a plain load); checksums are summed in host order, which the one's-complement sum
// allows as long as the folded result is stored back in host order too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the checksum code assumes a little-endian host"
#endif

namespace fl {

constexpr size_t kIpv4HeaderMin = 20;
constexpr uint8_t kProtoIcmp = 1;
constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kProtoUdp = 17;

// TCP flag bits (byte 13 of the TCP header).
constexpr uint8_t kTcpFin = 0x01, kTcpSyn = 0x02, kTcpRst = 0x04, kTcpPsh = 0x08, kTcpAck = 0x10,
                  kTcpUrg = 0x20, kTcpEce = 0x40, kTcpCwr = 0x80;

inline uint16_t load16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return v; }  // raw (network) order
inline uint32_t load32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
inline void store16(uint8_t* p, uint16_t v) { memcpy(p, &v, 2); }
inline uint16_t be16(const uint8_t* p) { return __builtin_bswap16(load16(p)); }
inline uint32_t be32(const uint8_t* p) { return __builtin_bswap32(load32(p)); }
inline void putBe16(uint8_t* p, uint16_t v) { store16(p, __builtin_bswap16(v)); }
inline void putBe32(uint8_t* p, uint32_t v) { v = __builtin_bswap32(v); memcpy(p, &v, 4); }

// IPv4 header fields (offsets per RFC 791).
inline unsigned ipVersion(const uint8_t* ip) { return ip[0] >> 4; }
inline unsigned ipHeaderLen(const uint8_t* ip) { return (ip[0] & 0x0f) * 4u; }
inline uint16_t ipTotalLen(const uint8_t* ip) { return be16(ip + 2); }
inline uint16_t ipId(const uint8_t* ip) { return be16(ip + 4); }
inline uint16_t ipFragField(const uint8_t* ip) { return be16(ip + 6); }  // flags + offset
inline bool ipIsFragment(const uint8_t* ip) { return (ipFragField(ip) & 0x3fff) != 0; }  // MF or offset
inline uint8_t ipTtl(const uint8_t* ip) { return ip[8]; }
inline uint8_t ipProto(const uint8_t* ip) { return ip[9]; }
inline uint32_t ipSrc(const uint8_t* ip) { return be32(ip + 12); }  // host order
inline uint32_t ipDst(const uint8_t* ip) { return be32(ip + 16); }

// TCP header fields.
inline uint32_t tcpSeq(const uint8_t* tcp) { return be32(tcp + 4); }
inline unsigned tcpHeaderLen(const uint8_t* tcp) { return (tcp[12] >> 4) * 4u; }
inline uint8_t tcpFlags(const uint8_t* tcp) { return tcp[13]; }

/** One's-complement sum of `len` bytes added to `sum` (not folded). */
inline uint64_t csumAdd(const uint8_t* p, size_t len, uint64_t sum) {
  // 64-bit words with end-around carry; the compiler turns this into add/adc.
  while (len >= 32) {
    uint64_t w[4];
    memcpy(w, p, 32);
    for (int i = 0; i < 4; i++) {
      sum += w[i];
      sum += (sum < w[i]);
    }
    p += 32;
    len -= 32;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    sum += w;
    sum += (sum < w);
    p += 8;
    len -= 8;
  }
  uint64_t tail = 0;
  memcpy(&tail, p, len);  // zero padding = the RFC 1071 odd-byte rule on a little-endian host
  sum += tail;
  sum += (sum < tail);
  return sum;
}

/** Folds a 64-bit one's-complement sum to 16 bits (host-order value of the raw field). */
inline uint16_t csumFold(uint64_t sum) {
  sum = (sum & 0xffffffffull) + (sum >> 32);
  sum = (sum & 0xffffffffull) + (sum >> 32);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

/** TCP/UDP pseudo-header sum for an IPv4 packet `ip` and an L4 length. */
inline uint64_t pseudoHeaderSum(const uint8_t* ip, uint8_t proto, uint32_t l4len) {
  uint64_t sum = static_cast<uint64_t>(load32(ip + 12)) + load32(ip + 16);
  sum += __builtin_bswap16(static_cast<uint16_t>(proto));
  sum += __builtin_bswap16(static_cast<uint16_t>(l4len));
  return sum;
}

/**
 * True when the TCP checksum of an IPv4 packet `ip` of `len` bytes (header of `ihl` bytes) is right:
 * the one's-complement sum over pseudo-header, TCP header and payload, checksum included, is 0xffff.
 */
inline bool tcpChecksumOk(const uint8_t* ip, size_t len, unsigned ihl) {
  const uint32_t l4len = static_cast<uint32_t>(len - ihl);
  return csumFold(csumAdd(ip + ihl, l4len, pseudoHeaderSum(ip, kProtoTcp, l4len))) == 0xffff;
}

/** Recomputes the IPv4 header checksum in place. */
inline void ipSetChecksum(uint8_t* ip) {
  store16(ip + 10, 0);
  store16(ip + 10, static_cast<uint16_t>(~csumFold(csumAdd(ip, ipHeaderLen(ip), 0))));
}

inline bool ipChecksumOk(const uint8_t* ip) { return csumFold(csumAdd(ip, ipHeaderLen(ip), 0)) == 0xffff; }

/** Decrements the TTL with an incremental checksum update (RFC 1624). False when it reaches 0. */
inline bool ipDecrementTtl(uint8_t* ip) {
  if (ip[8] <= 1) return false;
  ip[8]--;
  // TTL is the high byte of the 16-bit word at offset 8: the word dropped by 0x0100.
  uint32_t c = static_cast<uint32_t>(be16(ip + 10)) + 0x0100;
  c = (c & 0xffff) + (c >> 16);
  putBe16(ip + 10, static_cast<uint16_t>(c));
  return true;
}

/** Why a packet was refused by `checkIpv4`. */
enum class Malformed { None, Short, Version, Header, Length, Checksum };

/**
 * The shape of one IPv4 packet of exactly `len` bytes: long enough, version 4, IHL between 5 and
 * what fits, total length equal to `len`. Enough for a TUN read, which the kernel wrote.
 */
inline Malformed checkIpv4Shape(const uint8_t* ip, size_t len) {
  if (len < kIpv4HeaderMin) return Malformed::Short;
  if (ipVersion(ip) != 4) return Malformed::Version;
  unsigned ihl = ipHeaderLen(ip);
  if (ihl < kIpv4HeaderMin || ihl > len) return Malformed::Header;
  if (ipTotalLen(ip) != len) return Malformed::Length;
  return Malformed::None;
}

/** checkIpv4Shape plus a correct header checksum: for what a peer sent (a UDP payload). */
inline Malformed checkIpv4(const uint8_t* ip, size_t len) {
  const Malformed shape = checkIpv4Shape(ip, len);
  if (shape != Malformed::None) return shape;
  if (!ipChecksumOk(ip)) return Malformed::Checksum;
  return Malformed::None;
}

}  // namespace fl
