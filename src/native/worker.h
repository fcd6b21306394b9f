// One forwarding thread: its own TUN queue and UDP socket, both directions, in batches.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "counters.h"
#include "vnet.h"
#include "worker_limits.h"
#include "route_table.h"

namespace fl {

class Forwarder;

struct alignas(64) WorkerCounters : Counters {};

class Worker {
 public:
  Worker(Forwarder& fwd, int tunFd, int udpFd, int stopFd);
  ~Worker();
  bool init(std::string* error);  // epoll set-up
  void run();                      // until the stop fd fires
  void closeEpoll();
  const WorkerCounters& counters() const { return c_; }

 private:
  // --- TUN -> UDP ---
  struct TxPacket {
    const uint8_t* head;  // whole packet, or the rebuilt IP+TCP header of one segment
    uint32_t headLen;
    const uint8_t* body;  // segment payload inside the TUN read buffer (null for whole packets)
    uint32_t bodyLen;
    const sockaddr_in* peer;
    uint32_t size() const { return headLen + bodyLen; }
  };
  struct TxMessage {
    const sockaddr_in* peer;
    size_t firstPacket, packets;
    uint32_t segSize, bytes;
  };
  /** Reads up to a batch of TUN packets and sends them. Returns false once the TUN is drained. */
  bool txBatch();
  void txPacket(uint8_t* buf, size_t n);
  void splitTso(uint8_t* pkt, size_t len, const VnetHdr& vh, const sockaddr_in* peer);
  void flushTx();
  void sendMessages(size_t from, size_t to);
  void sendOneByOne(const TxMessage& m);
  void sendUnreachable(const uint8_t* offender, size_t len);

  // --- UDP -> TUN ---
  /** Receives a batch of datagrams and writes them to the TUN. False once the socket is drained. */
  bool rxBatch();
  void rxDatagram(uint8_t* pkt, size_t len, bool udpChecked, uint32_t from);
  bool sourceAllowed(uint32_t from, uint32_t src);
  struct Flow;  // an in-progress coalesced TCP super-packet
  void coalesce(uint8_t* pkt, size_t len, bool udpChecked);
  void writeAsIs(uint8_t* pkt, size_t len);
  void flushFlow(Flow& f);
  void flushAllFlows();
  void writeTun(const iovec* iov, int iovcnt, uint32_t packets, uint32_t bytes, bool gso);

  void refreshTable();

  Forwarder& fwd_;
  const int tunFd_, udpFd_, stopFd_;
  int epollFd_ = -1;
  bool vnet_ = false, batch_ = true, coalesce_ = false, checkSource_ = true;
  WorkerCounters c_;

  std::shared_ptr<const RouteTable> table_;
  uint64_t tableVersion_ = ~0ull;
  // The last (outer source, inner source) pair the table allowed: the segments of one flow share it,
  // so a burst costs one lookup. Valid for the current table only.
  bool allowedKnown_ = false;
  uint32_t allowedFrom_ = 0, allowedSrc_ = 0;

  std::vector<uint8_t> txBufs_;
  size_t txReadsMax_;
  std::vector<uint8_t> segHeaders_;
  size_t segHeadersUsed_ = 0;
  std::vector<TxPacket> txPackets_;
  std::vector<TxMessage> txMessages_;
  std::vector<iovec> txIov_;
  std::vector<mmsghdr> txMmsg_;
  std::vector<uint64_t> txCtl_;  // cmsg space per message (uint64_t for alignment)

  std::vector<uint8_t> rxBufs_;
  size_t rxMsgsMax_;
  std::vector<mmsghdr> rxMmsg_;
  std::vector<iovec> rxIov_;
  std::vector<sockaddr_in> rxAddr_;
  std::vector<uint64_t> rxCtl_;

  struct Flow {
    bool open = false;
    uint8_t* first = nullptr;  // first packet; its header becomes the super-packet's
    uint32_t firstLen = 0, hdrLen = 0, segSize = 0, total = 0, nextSeq = 0, wireBytes = 0;
    uint8_t lastFlags = 0;
    bool sealed = false;  // a short or PSH segment ended it
    bool firstUnchecked = false;  // the first segment's TCP checksum is still to be checked before a merge
    uint32_t packets = 0;
    uint64_t order = 0;
    VnetHdr vh;
    iovec iov[1 + kMaxFlowPackets];  // vnet header, first packet, then each further payload
  };
  static constexpr int kFlows = 8;
  Flow flows_[kFlows];
  uint64_t flowOrder_ = 0;

  // ICMP errors are rate limited like the kernel's own (icmp_msgs_per_sec).
  double icmpTokens_ = 0;
  uint64_t icmpLastNs_ = 0;
};

}  // namespace fl
