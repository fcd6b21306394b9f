// The worker's frame: set-up, the epoll loop, table refresh. The two directions are in
// tx_path.cc (TUN -> UDP) and rx_path.cc (UDP -> TUN).
#include "worker.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "forwarder.h"
#include "worker_limits.h"
#include "packet.h"

namespace fl {

Worker::Worker(Forwarder& fwd, int tunFd, int udpFd, int stopFd)
    : fwd_(fwd), tunFd_(tunFd), udpFd_(udpFd), stopFd_(stopFd) {
  vnet_ = fwd.features_.vnetHdr;
  coalesce_ = fwd.features_.tunCoalesce;
  checkSource_ = fwd.opts_.innerSourceCheck;
  batch_ = fwd.opts_.batch;
  txReadsMax_ = batch_ ? kTxReads : 1;
  rxMsgsMax_ = batch_ ? kRxMsgs : 1;
  icmpTokens_ = kIcmpPerSecond;
}

Worker::~Worker() {
  if (epollFd_ >= 0) close(epollFd_);
}

bool Worker::init(std::string* error) {
  epollFd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epollFd_ < 0) {
    *error = std::string("epoll_create1: ") + strerror(errno);
    return false;
  }
  const int fds[3] = {tunFd_, udpFd_, stopFd_};
  for (uint32_t i = 0; i < 3; i++) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    if (epoll_ctl(epollFd_, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
      *error = std::string("epoll_ctl: ") + strerror(errno);
      return false;
    }
  }
  txBufs_.resize(txReadsMax_ * kBufSize);
  segHeaders_.resize(kSegSlots * kSegSlot);
  txPackets_.reserve(kSegSlots + txReadsMax_);
  rxBufs_.resize(rxMsgsMax_ * kBufSize);
  rxMmsg_.resize(rxMsgsMax_);
  rxIov_.resize(rxMsgsMax_);
  rxAddr_.resize(rxMsgsMax_);
  rxCtl_.resize(rxMsgsMax_ * kCtlWords);
  return true;
}

void Worker::refreshTable() {
  // One acquire load per batch; the lock is only taken when the table really changed.
  if (fwd_.tableVersion_.load(std::memory_order_acquire) == tableVersion_) return;
  table_ = fwd_.currentTable(&tableVersion_);
  allowedKnown_ = false;
}

void Worker::run() {
  refreshTable();
  epoll_event events[3];
  while (!fwd_.stopping_.load(std::memory_order_relaxed)) {
    int n = epoll_wait(epollFd_, events, 3, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    bool tunReady = false, udpReady = false;
    for (int i = 0; i < n; i++) {
      if (events[i].data.u32 == 0) tunReady = true;
      if (events[i].data.u32 == 1) udpReady = true;
      if (events[i].data.u32 == 2) return;
    }
    // Alternate between the directions until both are drained (bounded, so that a stop request
    // is noticed); level-triggered epoll reports anything left over.
    for (int round = 0; (tunReady || udpReady) && round < 256; round++) {
      if (tunReady) tunReady = txBatch();
      if (udpReady) udpReady = rxBatch();
      if ((round & 15) == 15 && fwd_.stopping_.load(std::memory_order_relaxed)) return;
    }
  }
}

void Worker::writeTun(const iovec* iov, int iovcnt, uint32_t packets, uint32_t bytes, bool gso) {
  ssize_t r;
  do r = writev(tunFd_, iov, iovcnt);
  while (r < 0 && errno == EINTR);
  bump(c_.tunWrites);
  if (r < 0) {
    bump(c_.tunWriteErrors, packets);
    return;
  }
  bump(c_.rxPackets, packets);
  bump(c_.rxBytes, bytes);
  if (gso) bump(c_.tunGsoWrites);
}

void Worker::closeEpoll() {
  if (epollFd_ >= 0) close(epollFd_);
  epollFd_ = -1;
}


}  // namespace fl
