// Batch sizes and limits shared by the worker's two directions.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

#include "vnet.h"

namespace fl {

constexpr size_t kVnetLen = sizeof(VnetHdr);  // 10
constexpr size_t kMaxIpPacket = 65535;
constexpr size_t kBufSize = 65536 + 64;  // vnet header + the largest IP packet, rounded
constexpr size_t kTxReads = 16;          // TUN reads per batch (each may be a 64 KiB super-packet)
constexpr size_t kRxMsgs = 8;            // recvmmsg messages per batch (each up to 64 KiB with GRO)
constexpr size_t kSegSlot = 128;         // room for one rebuilt IP + TCP header (<= 60 + 60)
constexpr size_t kSegSlots = 2048;       // rebuilt headers per flush
constexpr uint32_t kMaxUdpSegs = 64;     // UDP_MAX_SEGMENTS on the oldest kernels with UDP GSO
constexpr uint32_t kMaxUdpPayload = 65507;
constexpr uint32_t kMaxFlowPackets = 64;
constexpr size_t kCtlWords = (CMSG_SPACE(sizeof(int)) + 7) / 8;
constexpr double kIcmpPerSecond = 1000;  // the kernel's default net.ipv4.icmp_msgs_per_sec

}  // namespace fl
