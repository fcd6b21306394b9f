// UDP -> TUN: receive datagrams in batches, check them, coalesce TCP segments, write them.
#include "worker.h"

#include <errno.h>
#include <netinet/udp.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include "forwarder.h"
#include "worker_limits.h"
#include "packet.h"

namespace fl {

namespace {

/** The size of each datagram in a received buffer: UDP GRO may have merged several. */
size_t groSegment(msghdr& h, size_t len) {
  for (cmsghdr* cm = CMSG_FIRSTHDR(&h); cm != nullptr; cm = CMSG_NXTHDR(&h, cm)) {
    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
      int size = 0;
      memcpy(&size, CMSG_DATA(cm), sizeof(size));
      if (size > 0) return static_cast<size_t>(size);
    }
  }
  return len;
}

size_t countDatagrams(msghdr& h, size_t len) {
  if (len == 0) return 1;
  const size_t segment = groSegment(h, len);
  return (len + segment - 1) / segment;
}

}  // namespace

bool Worker::rxBatch() {
  refreshTable();
  for (size_t m = 0; m < rxMsgsMax_; m++) {
    rxIov_[m] = {rxBufs_.data() + m * kBufSize, kBufSize};
    msghdr& h = rxMmsg_[m].msg_hdr;
    memset(&rxMmsg_[m], 0, sizeof(mmsghdr));
    h.msg_name = &rxAddr_[m];
    h.msg_namelen = sizeof(sockaddr_in);
    h.msg_iov = &rxIov_[m];
    h.msg_iovlen = 1;
    h.msg_control = &rxCtl_[m * kCtlWords];
    h.msg_controllen = kCtlWords * sizeof(uint64_t);
  }
  const int got = recvmmsg(udpFd_, rxMmsg_.data(), static_cast<unsigned>(rxMsgsMax_), MSG_DONTWAIT, nullptr);
  if (got <= 0) return false;
  bump(c_.udpRecvCalls);
  for (int m = 0; m < got; m++) {
    msghdr& h = rxMmsg_[m].msg_hdr;
    uint8_t* buf = static_cast<uint8_t*>(rxIov_[m].iov_base);
    const size_t len = rxMmsg_[m].msg_len;
    // The sender is checked first: a stranger's datagram counts as that, whatever it holds.
    if (h.msg_namelen < sizeof(sockaddr_in) || !table_->isMember(rxAddr_[m].sin_addr.s_addr)) {
      bump(c_.dropUnknownSource, countDatagrams(h, len));
      continue;
    }
    if (h.msg_flags & MSG_TRUNC) {
      bump(c_.dropMalformedLength);
      continue;
    }
    if (len == 0) {
      bump(c_.dropMalformedShort);
      continue;
    }
    const size_t segment = groSegment(h, len);
    const size_t datagrams = (len + segment - 1) / segment;
    if (datagrams > 1) bump(c_.udpGroRecvs);
    if (std::min(segment, len) > c_.rxMaxDatagram.load(std::memory_order_relaxed))
      c_.rxMaxDatagram.store(std::min(segment, len), std::memory_order_relaxed);
    // A buffer of several datagrams was merged by the kernel's UDP GRO, which takes only datagrams
    // with a non-zero UDP checksum and verifies it first. A datagram that came alone may have
    // carried a zero checksum (allowed in IPv4), which nobody verified.
    const bool udpChecked = datagrams > 1;
    const uint32_t from = rxAddr_[m].sin_addr.s_addr;
    for (size_t off = 0; off < len; off += segment) rxDatagram(buf + off, std::min(segment, len - off), udpChecked, from);
  }
  flushAllFlows();
  return static_cast<size_t>(got) == rxMsgsMax_;
}

bool Worker::sourceAllowed(uint32_t from, uint32_t src) {
  if (allowedKnown_ && from == allowedFrom_ && src == allowedSrc_) return true;
  if (!table_->mayCarry(from, src)) return false;
  allowedKnown_ = true;
  allowedFrom_ = from;
  allowedSrc_ = src;
  return true;
}

void Worker::rxDatagram(uint8_t* pkt, size_t len, bool udpChecked, uint32_t from) {
  switch (checkIpv4(pkt, len)) {
    case Malformed::None:
      break;
    case Malformed::Short:
      bump(c_.dropMalformedShort);
      return;
    case Malformed::Version:
      bump(c_.dropMalformedVersion);
      return;
    case Malformed::Header:
      bump(c_.dropMalformedHeader);
      return;
    case Malformed::Length:
      bump(c_.dropMalformedLength);
      return;
    case Malformed::Checksum:
      bump(c_.dropMalformedChecksum);
      return;
  }
  // A member speaks only for its own subnet (WireGuard's AllowedIPs rule): the outer source is
  // easily forged, so without this anyone could hand our pods packets that claim to come from any
  // address — one of our own pods, or another node's. Checked per datagram, before coalescing.
  if (checkSource_ && !sourceAllowed(from, ipSrc(pkt))) {
    bump(c_.dropSpoofedSource);
    return;
  }
  // A member only sends us packets for our subnet; anything else would make us a relay.
  if (!table_->isLocal(ipDst(pkt))) {
    bump(c_.dropNotLocal);
    return;
  }
  if (!ipDecrementTtl(pkt)) {
    bump(c_.dropTtlExpired);
    return;
  }
  if (coalesce_) {
    coalesce(pkt, len, udpChecked);
    return;
  }
  VnetHdr vh;
  memset(&vh, 0, sizeof(vh));
  iovec iov[2];
  int n = 0;
  if (vnet_) iov[n++] = {&vh, kVnetLen};
  iov[n++] = {pkt, len};
  writeTun(iov, n, 1, static_cast<uint32_t>(len), false);
}

void Worker::writeAsIs(uint8_t* pkt, size_t len) {
  // No NEEDS_CSUM: the kernel (in the end the receiving pod's TCP) checks the checksum as it came.
  VnetHdr vh;
  memset(&vh, 0, sizeof(vh));
  iovec iov[2] = {{&vh, kVnetLen}, {pkt, len}};
  writeTun(iov, 2, 1, static_cast<uint32_t>(len), false);
}

void Worker::coalesce(uint8_t* pkt, size_t len, bool udpChecked) {
  // GRO in user space: consecutive in-order TCP segments of one flow with identical headers
  // (apart from sequence number, length and checksum) become one TSO super-packet written with
  // a VnetHdr; the kernel keeps it whole up to the receiving socket and finishes the checksum
  // (NEEDS_CSUM): it computes a new TCP checksum rather than checking the old ones. So before a
  // segment is merged its own TCP checksum must be known good: verified here unless the kernel
  // verified the datagram's UDP checksum, which covers the same bytes (udpChecked). A segment
  // that fails is written alone, as it came, for the receiver to drop.
  const unsigned ihl = ipHeaderLen(pkt);
  const bool tcp = ipProto(pkt) == kProtoTcp && ihl == 20 && !ipIsFragment(pkt) && len >= 40;
  const uint8_t* th = pkt + 20;
  const unsigned thl = tcp ? tcpHeaderLen(th) : 0;
  const bool sane = tcp && thl >= 20 && 20 + thl <= len;
  Flow* match = nullptr;
  if (sane) {
    for (Flow& f : flows_) {
      if (f.open && load32(f.first + 12) == load32(pkt + 12) && load32(f.first + 16) == load32(pkt + 16) &&
          load32(f.first + 20) == load32(pkt + 20)) {
        match = &f;
        break;
      }
    }
  }
  const uint32_t payload = sane ? static_cast<uint32_t>(len - 20 - thl) : 0;
  const uint8_t flags = sane ? tcpFlags(th) : 0;
  if (!sane || payload == 0 || (flags & ~kTcpPsh) != kTcpAck) {
    if (match) flushFlow(*match);  // keep the flow's order
    writeAsIs(pkt, len);
    return;
  }
  if (match) {
    Flow& f = *match;
    const uint8_t* a = f.first;
    const bool fits = !f.sealed && f.packets < kMaxFlowPackets && payload <= f.segSize &&
                      f.total + payload <= kMaxIpPacket && f.hdrLen == 20 + thl && tcpSeq(th) == f.nextSeq &&
                      a[1] == pkt[1] && a[8] == pkt[8] && (a[6] & 0x40) == (pkt[6] & 0x40) &&
                      load32(a + 28) == load32(pkt + 28) && load16(a + 34) == load16(pkt + 34) &&
                      (thl == 20 || memcmp(a + 40, pkt + 40, thl - 20) == 0);
    if (fits && !udpChecked && !tcpChecksumOk(pkt, len, 20)) {
      bump(c_.rxTcpChecksumBad);
      flushFlow(f);  // keep the flow's order
      writeAsIs(pkt, len);
      return;
    }
    if (fits && f.firstUnchecked) {
      if (tcpChecksumOk(f.first, f.firstLen, 20)) {
        f.firstUnchecked = false;
      } else {
        bump(c_.rxTcpChecksumBad);
        flushFlow(f);  // a flow of one: written without NEEDS_CSUM; this segment starts a new flow
      }
    }
    if (fits && f.open) {
      f.iov[1 + f.packets] = {pkt + f.hdrLen, payload};
      f.packets++;
      f.total += payload;
      f.wireBytes += static_cast<uint32_t>(len);
      f.nextSeq += payload;
      f.lastFlags = flags;
      if (payload < f.segSize || (flags & kTcpPsh)) f.sealed = true;
      return;
    }
    flushFlow(f);
  }
  Flow* slot = match;  // closed by now, if it was the match
  if (slot == nullptr) {
    for (Flow& f : flows_)
      if (!f.open) {
        slot = &f;
        break;
      }
  }
  if (slot == nullptr) {
    slot = &flows_[0];
    for (Flow& f : flows_)
      if (f.order < slot->order) slot = &f;
    flushFlow(*slot);
  }
  Flow& f = *slot;
  f.open = true;
  f.first = pkt;
  f.firstLen = static_cast<uint32_t>(len);
  f.hdrLen = 20 + thl;
  f.segSize = payload;
  f.total = static_cast<uint32_t>(len);
  f.wireBytes = static_cast<uint32_t>(len);
  f.nextSeq = tcpSeq(th) + payload;
  f.lastFlags = flags;
  f.sealed = (flags & kTcpPsh) != 0;
  f.firstUnchecked = !udpChecked;  // checked lazily: most flows of one are never merged
  f.packets = 1;
  f.order = flowOrder_++;
  f.iov[0] = {&f.vh, kVnetLen};
  f.iov[1] = {pkt, len};
}

void Worker::flushFlow(Flow& f) {
  if (!f.open) return;
  f.open = false;
  memset(&f.vh, 0, sizeof(f.vh));
  if (f.packets == 1) {
    writeTun(f.iov, 2, 1, f.firstLen, false);
    return;
  }
  uint8_t* ip = f.first;
  putBe16(ip + 2, static_cast<uint16_t>(f.total));
  ipSetChecksum(ip);
  uint8_t* th = ip + 20;
  if (f.lastFlags & kTcpPsh) th[13] |= kTcpPsh;
  // CHECKSUM_PARTIAL convention: the field holds the (uncomplemented) pseudo-header sum.
  store16(th + 16, csumFold(pseudoHeaderSum(ip, kProtoTcp, f.total - 20)));
  f.vh.flags = kVnetNeedsCsum;
  f.vh.gsoType = kGsoTcpv4;
  f.vh.hdrLen = static_cast<uint16_t>(f.hdrLen);
  f.vh.gsoSize = static_cast<uint16_t>(f.segSize);
  f.vh.csumStart = 20;
  f.vh.csumOffset = 16;
  writeTun(f.iov, static_cast<int>(1 + f.packets), f.packets, f.wireBytes, true);
}

void Worker::flushAllFlows() {
  // In the order the flows started, which keeps their relative order close to arrival order.
  for (;;) {
    Flow* oldest = nullptr;
    for (Flow& f : flows_)
      if (f.open && (oldest == nullptr || f.order < oldest->order)) oldest = &f;
    if (oldest == nullptr) return;
    flushFlow(*oldest);
  }
}

}  // namespace fl
