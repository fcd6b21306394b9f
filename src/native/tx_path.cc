// TUN -> UDP: read (TSO super-)packets, split them, send them in as few system calls as possible.
#include "worker.h"

#include <errno.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include "forwarder.h"
#include "worker_limits.h"
#include "packet.h"

namespace fl {

namespace {

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

bool samePeer(const sockaddr_in* a, const sockaddr_in* b) {
  return a == b || (a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port);
}

bool isIcmpError(uint8_t type) { return type == 3 || type == 4 || type == 5 || type == 11 || type == 12; }

// Addresses an ICMP error must never be sent to or about (RFC 1812 4.3.2.7).
bool unsuitableForIcmp(uint32_t addr) {
  return addr == 0 || addr == 0xffffffffu || (addr >> 28) == 0xe || (addr >> 24) == 127;
}

}  // namespace

bool Worker::txBatch() {
  refreshTable();
  bool more = true;
  size_t reads = 0;
  while (reads < txReadsMax_) {
    uint8_t* buf = txBufs_.data() + reads * kBufSize;
    ssize_t n = read(tunFd_, buf, kBufSize);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) {
      // The device is gone or broken (e.g. `ip link del flannel0`): stop polling it, or epoll
      // would report it forever, and let the backend notice and rebuild.
      fwd_.tunFailure_.store(errno, std::memory_order_relaxed);
      epoll_ctl(epollFd_, EPOLL_CTL_DEL, tunFd_, nullptr);
      more = false;
      break;
    }
    if (n <= 0) {  // EAGAIN: drained
      more = false;
      break;
    }
    reads++;
    bump(c_.tunReads);
    txPacket(buf, static_cast<size_t>(n));
  }
  flushTx();
  return more;
}

void Worker::txPacket(uint8_t* buf, size_t n) {
  VnetHdr vh;
  memset(&vh, 0, sizeof(vh));
  uint8_t* pkt = buf;
  size_t len = n;
  if (vnet_) {
    if (len < kVnetLen) {
      bump(c_.dropTunInvalid);
      return;
    }
    memcpy(&vh, buf, kVnetLen);
    pkt += kVnetLen;
    len -= kVnetLen;
  }
  // The kernel wrote this packet, so only its shape is checked (IPv6 and such are dropped here).
  if (checkIpv4Shape(pkt, len) != Malformed::None) {
    bump(c_.dropTunInvalid);
    return;
  }
  const bool gso = vh.gsoType != kGsoNone;
  uint32_t segments = 1;
  if (gso) {
    const unsigned ihl = ipHeaderLen(pkt);
    if ((vh.gsoType & ~kGsoEcn) != kGsoTcpv4 || ipProto(pkt) != kProtoTcp ||
        vh.gsoSize == 0 || len < ihl + 20 || tcpHeaderLen(pkt + ihl) < 20 || ihl + tcpHeaderLen(pkt + ihl) > len) {
      bump(c_.dropTunInvalid);
      return;
    }
    const uint32_t payload = static_cast<uint32_t>(len - ihl - tcpHeaderLen(pkt + ihl));
    segments = std::max<uint32_t>(1, (payload + vh.gsoSize - 1) / vh.gsoSize);
  }

  const sockaddr_in* peer = table_->lookup(ipDst(pkt));
  if (peer == nullptr) {
    bump(c_.dropNoRoute, segments);
    sendUnreachable(pkt, len);
    return;
  }
  if (!ipDecrementTtl(pkt)) {
    bump(c_.dropTtlExpired, segments);
    return;
  }
  if (gso) {
    bump(c_.tunGsoReads);
    splitTso(pkt, len, vh, peer);
    return;
  }
  if (vh.flags & kVnetNeedsCsum) {
    // Checksum offload: the field holds the pseudo-header sum; finish it over the L4 data.
    const size_t start = vh.csumStart, off = vh.csumOffset;
    if (start < ipHeaderLen(pkt) || start + off + 2 > len) {
      bump(c_.dropTunInvalid);
      return;
    }
    uint16_t sum = static_cast<uint16_t>(~csumFold(csumAdd(pkt + start, len - start, 0)));
    if (sum == 0 && ipProto(pkt) == kProtoUdp) sum = 0xffff;  // 0 means "no checksum" in UDP
    store16(pkt + start + off, sum);
  }
  if (txPackets_.size() >= kSegSlots) flushTx();
  txPackets_.push_back({pkt, static_cast<uint32_t>(len), nullptr, 0, peer});
}

void Worker::splitTso(uint8_t* pkt, size_t len, const VnetHdr& vh, const sockaddr_in* peer) {
  // Cut a TCP super-packet into MSS-sized segments, as a NIC would: each gets a copy of the
  // headers with its own length, IP ID, sequence number, flags and both checksums. The payload
  // stays in the read buffer and is referenced by an iovec, so it is copied only by the kernel.
  const unsigned ihl = ipHeaderLen(pkt);
  const uint8_t* tcp = pkt + ihl;
  const unsigned thl = tcpHeaderLen(tcp);
  const unsigned hdrLen = ihl + thl;
  const uint32_t payload = static_cast<uint32_t>(len - hdrLen);
  const uint32_t mss = vh.gsoSize;
  const uint32_t segments = payload == 0 ? 1 : (payload + mss - 1) / mss;
  if (segments > kSegSlots) {
    bump(c_.dropTunInvalid, segments);
    return;
  }
  if (segHeadersUsed_ + segments > kSegSlots || txPackets_.size() + segments > kSegSlots + txReadsMax_) flushTx();

  const uint16_t id0 = ipId(pkt);
  const uint32_t seq0 = tcpSeq(tcp);
  const uint8_t flags0 = tcpFlags(tcp);
  for (uint32_t i = 0; i < segments; i++) {
    const uint32_t off = i * mss;
    const uint32_t plen = std::min(mss, payload - off);
    uint8_t* h = segHeaders_.data() + (segHeadersUsed_++) * kSegSlot;
    memcpy(h, pkt, hdrLen);
    putBe16(h + 2, static_cast<uint16_t>(hdrLen + plen));
    putBe16(h + 4, static_cast<uint16_t>(id0 + i));
    ipSetChecksum(h);
    uint8_t* th = h + ihl;
    putBe32(th + 4, seq0 + off);
    uint8_t flags = flags0;
    if (i + 1 < segments) flags &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
    if (i > 0) flags &= static_cast<uint8_t>(~kTcpCwr);
    th[13] = flags;
    store16(th + 16, 0);
    uint64_t sum = pseudoHeaderSum(h, kProtoTcp, thl + plen);
    sum = csumAdd(th, thl, sum);
    sum = csumAdd(pkt + hdrLen + off, plen, sum);
    store16(th + 16, static_cast<uint16_t>(~csumFold(sum)));
    txPackets_.push_back({h, hdrLen, pkt + hdrLen + off, plen, peer});
  }
}

void Worker::flushTx() {
  if (txPackets_.empty()) return;
  // Group consecutive packets to the same peer into one message when UDP GSO can carry them:
  // equal sizes, only the last may be shorter. The wire still sees one IP packet per datagram.
  const bool gso = fwd_.features_.udpGso && fwd_.gsoUsable_.load(std::memory_order_relaxed);
  txMessages_.clear();
  for (size_t i = 0; i < txPackets_.size();) {
    const TxPacket& p0 = txPackets_[i];
    TxMessage m{p0.peer, i, 1, p0.size(), p0.size()};
    size_t j = i + 1;
    if (gso) {
      while (j < txPackets_.size() && m.packets < kMaxUdpSegs) {
        const TxPacket& p = txPackets_[j];
        const uint32_t size = p.size();
        if (!samePeer(p.peer, m.peer) || size > m.segSize || m.bytes + size > kMaxUdpPayload) break;
        m.packets++;
        m.bytes += size;
        j++;
        if (size < m.segSize) break;
      }
    }
    txMessages_.push_back(m);
    i = j;
  }

  txIov_.resize(txPackets_.size() * 2);
  txMmsg_.resize(txMessages_.size());
  txCtl_.assign(txMessages_.size() * kCtlWords, 0);
  size_t v = 0;
  for (size_t k = 0; k < txMessages_.size(); k++) {
    const TxMessage& m = txMessages_[k];
    msghdr& h = txMmsg_[k].msg_hdr;
    memset(&txMmsg_[k], 0, sizeof(mmsghdr));
    h.msg_name = const_cast<sockaddr_in*>(m.peer);
    h.msg_namelen = sizeof(sockaddr_in);
    h.msg_iov = &txIov_[v];
    for (size_t p = m.firstPacket; p < m.firstPacket + m.packets; p++) {
      const TxPacket& pk = txPackets_[p];
      txIov_[v++] = {const_cast<uint8_t*>(pk.head), pk.headLen};
      if (pk.bodyLen > 0) txIov_[v++] = {const_cast<uint8_t*>(pk.body), pk.bodyLen};
    }
    h.msg_iovlen = static_cast<size_t>(&txIov_[v] - h.msg_iov);
    if (m.packets > 1) {
      h.msg_control = &txCtl_[k * kCtlWords];
      h.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
      cmsghdr* cm = CMSG_FIRSTHDR(&h);
      cm->cmsg_level = SOL_UDP;
      cm->cmsg_type = UDP_SEGMENT;
      cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      const uint16_t seg = static_cast<uint16_t>(m.segSize);
      memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
    }
  }
  sendMessages(0, txMessages_.size());
  txPackets_.clear();
  segHeadersUsed_ = 0;
}

void Worker::sendMessages(size_t from, size_t to) {
  size_t k = from;
  while (k < to) {
    if (!batch_) {  // upstream-like: one system call per datagram
      sendOneByOne(txMessages_[k]);
      k++;
      continue;
    }
    const unsigned count = static_cast<unsigned>(std::min<size_t>(to - k, 1024));
    const int sent = sendmmsg(udpFd_, &txMmsg_[k], count, 0);
    bump(c_.udpSendCalls);
    if (sent > 0) {
      for (int i = 0; i < sent; i++) {
        const TxMessage& m = txMessages_[k + i];
        bump(c_.txPackets, m.packets);
        bump(c_.txBytes, m.bytes);
        if (m.packets > 1) bump(c_.udpGsoSends);
      }
      k += static_cast<size_t>(sent);
      continue;
    }
    if (errno == EINTR) continue;
    const TxMessage& m = txMessages_[k];
    if (m.packets > 1 && (errno == EIO || errno == EINVAL)) {
      // EIO: the egress device cannot checksum-offload, which UDP GSO needs; stop using it.
      // EINVAL: a segment no longer fits the path MTU; let the datagrams go one by one.
      if (errno == EIO) fwd_.gsoUsable_.store(false, std::memory_order_relaxed);
      sendOneByOne(m);
    } else {
      bump(c_.txErrors, m.packets);  // e.g. no route to the peer, or a 100 ms send timeout
    }
    k++;
  }
}

void Worker::sendOneByOne(const TxMessage& m) {
  for (size_t p = m.firstPacket; p < m.firstPacket + m.packets; p++) {
    const TxPacket& pk = txPackets_[p];
    iovec iov[2] = {{const_cast<uint8_t*>(pk.head), pk.headLen}, {const_cast<uint8_t*>(pk.body), pk.bodyLen}};
    msghdr h;
    memset(&h, 0, sizeof(h));
    h.msg_name = const_cast<sockaddr_in*>(m.peer);
    h.msg_namelen = sizeof(sockaddr_in);
    h.msg_iov = iov;
    h.msg_iovlen = pk.bodyLen > 0 ? 2 : 1;
    ssize_t r;
    do r = sendmsg(udpFd_, &h, 0);
    while (r < 0 && errno == EINTR);
    bump(c_.udpSendCalls);
    if (r < 0) {
      bump(c_.txErrors);
    } else {
      bump(c_.txPackets);
      bump(c_.txBytes, pk.size());
    }
  }
}

void Worker::sendUnreachable(const uint8_t* offender, size_t len) {
  // ICMP destination unreachable (net unreachable) back into the TUN, toward the sender, as
  // upstream does; unlike upstream, an echo request gets one too (only ICMP errors are exempt).
  const uint32_t from = table_->icmpSource();
  const unsigned ihl = ipHeaderLen(offender);
  if (from == 0 || (ipFragField(offender) & 0x1fff) != 0) return;  // no address yet / not a first fragment
  if (unsuitableForIcmp(ipSrc(offender)) || unsuitableForIcmp(ipDst(offender))) return;
  if (ipProto(offender) == kProtoIcmp && (len <= ihl || isIcmpError(offender[ihl]))) return;
  const uint64_t now = monotonicNs();
  icmpTokens_ = std::min(kIcmpPerSecond, icmpTokens_ + static_cast<double>(now - icmpLastNs_) * kIcmpPerSecond / 1e9);
  icmpLastNs_ = now;
  if (icmpTokens_ < 1) return;
  icmpTokens_ -= 1;

  uint8_t pkt[20 + 8 + 60 + 8];
  const size_t quote = std::min<size_t>(len, ihl + 8);
  const size_t total = 20 + 8 + quote;
  memset(pkt, 0, 28);
  pkt[0] = 0x45;
  putBe16(pkt + 2, static_cast<uint16_t>(total));
  pkt[8] = 64;  // TTL
  pkt[9] = kProtoIcmp;
  putBe32(pkt + 12, from);
  memcpy(pkt + 16, offender + 12, 4);  // back to the offender's source
  ipSetChecksum(pkt);
  pkt[20] = 3;  // destination unreachable
  pkt[21] = 0;  // net unreachable
  memcpy(pkt + 28, offender, quote);
  store16(pkt + 22, static_cast<uint16_t>(~csumFold(csumAdd(pkt + 20, 8 + quote, 0))));

  VnetHdr vh;
  memset(&vh, 0, sizeof(vh));
  iovec iov[2];
  int n = 0;
  if (vnet_) iov[n++] = {&vh, kVnetLen};
  iov[n++] = {pkt, total};
  if (writev(tunFd_, iov, n) > 0) {
    bump(c_.icmpUnreachableSent);
  } else {
    bump(c_.tunWriteErrors);
  }
}

}  // namespace fl
