// The virtio_net_hdr that prefixes every TUN read and write once IFF_VNET_HDR is set
// (linux/virtio_net.h itself cannot be included from C++: it names a field `class`).
#pragma once

#include <cstdint>

namespace fl {

struct VnetHdr {
  uint8_t flags;
  uint8_t gsoType;
  uint16_t hdrLen;     // host byte order (little-endian hosts only; see packet.h)
  uint16_t gsoSize;
  uint16_t csumStart;
  uint16_t csumOffset;
};
static_assert(sizeof(VnetHdr) == 10, "virtio_net_hdr is 10 bytes");

constexpr uint8_t kVnetNeedsCsum = 1;  // VIRTIO_NET_HDR_F_NEEDS_CSUM
constexpr uint8_t kGsoNone = 0;        // VIRTIO_NET_HDR_GSO_NONE
constexpr uint8_t kGsoTcpv4 = 1;       // VIRTIO_NET_HDR_GSO_TCPV4
constexpr uint8_t kGsoEcn = 0x80;      // VIRTIO_NET_HDR_GSO_ECN

}  // namespace fl
