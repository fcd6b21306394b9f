// Data-path counters. Each worker owns one block and is its only writer, so an increment is a
// relaxed load + store (a plain add, no locked instruction); readers sum the blocks.
#pragma once

#include <atomic>
#include <cstdint>

namespace fl {

// X-macro: one list drives the struct, the reset and the JS object, so they cannot drift apart.
#define FL_COUNTERS(X)                                                                                   \
  X(txPackets)         /* inner packets sent to peers (after splitting TSO super-packets) */           \
  X(txBytes)           /* their bytes (= UDP payload bytes) */                                          \
  X(rxPackets)         /* inner packets written to the TUN */                                           \
  X(rxBytes)                                                                                             \
  X(dropNoRoute)       /* TUN packets to a destination no lease covers (ICMP net unreachable sent) */ \
  X(icmpUnreachableSent)                                                                                 \
  X(dropTtlExpired)    /* TTL reached 0 when forwarding (either direction) */                           \
  X(dropTunInvalid)    /* TUN reads that were not well-formed IPv4 (e.g. IPv6 router solicitations) */\
  X(dropMalformedShort)    /* datagram shorter than an IPv4 header */                                   \
  X(dropMalformedVersion)  /* IP version is not 4 */                                                    \
  X(dropMalformedHeader)   /* IHL < 5 or header longer than the datagram */                             \
  X(dropMalformedLength)   /* IP total length differs from the datagram length */                       \
  X(dropMalformedChecksum) /* IP header checksum wrong */                                               \
  X(dropUnknownSource) /* datagram from an address that holds no lease */                               \
  X(dropSpoofedSource) /* inner source outside the subnets of the member the datagram came from */      \
  X(dropNotLocal)      /* inner destination outside this node's subnet (we are not a relay) */          \
  X(txErrors)          /* packets the UDP socket refused (sendmmsg error) */                            \
  X(tunWriteErrors)    /* packets the TUN refused */                                                    \
  X(tunReads)          /* read() calls on the TUN that returned a packet */                             \
  X(tunGsoReads)       /* ... of which were TSO super-packets split by us */                            \
  X(udpSendCalls)      /* sendmmsg/sendmsg system calls */                                              \
  X(udpGsoSends)       /* messages carrying several datagrams (UDP_SEGMENT) */                          \
  X(udpRecvCalls)      /* recvmmsg calls that returned data */                                          \
  X(udpGroRecvs)       /* messages carrying several datagrams (UDP_GRO) */                              \
  X(tunWrites)         /* write() calls on the TUN */                                                   \
  X(tunGsoWrites)      /* ... of which were coalesced TCP super-packets */                            \
  X(rxTcpChecksumBad)  /* TCP segments refused for coalescing: wrong checksum (written as they came) */

struct Counters {
#define FL_FIELD(name) std::atomic<uint64_t> name{0};
  FL_COUNTERS(FL_FIELD)
#undef FL_FIELD
  /** Largest UDP payload received (diagnoses peers that send oversized datagrams). */
  std::atomic<uint64_t> rxMaxDatagram{0};
};

/** Single-writer add: no read-modify-write instruction needed. */
inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace fl
