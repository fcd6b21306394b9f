// The udp backend's data path: TUN queue(s) <-> UDP socket(s), run by native worker threads.
// JavaScript only configures it (routes, own subnet) and reads counters; no packet crosses into JS.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "counters.h"
#include "route_table.h"

namespace fl {

struct ForwarderOptions {
  std::string tunName = "flannel0";
  int mtu = 1472;
  uint32_t bindAddr = 0;  // host order; 0 = any
  uint16_t port = 8285;
  int workers = 1;           // one TUN queue + one UDP socket (SO_REUSEPORT) each
  std::string netnsPath;     // open devices inside this network namespace (tests); empty = ours
  int socketBufferBytes = 4 << 20;
  // Each optimisation can be switched off, to measure what it brings and to fall back if a
  // kernel lacks it. Off everywhere = upstream's behaviour (one packet per system call).
  bool batch = true;         // recvmmsg/sendmmsg and several TUN reads per round
  bool tunOffload = true;    // IFF_VNET_HDR + TSO: the kernel hands us TCP super-packets to split
  bool udpGso = true;        // UDP_SEGMENT: many equal datagrams per sendmsg
  bool udpGro = true;        // UDP_GRO: many datagrams per recvmsg
  bool tunCoalesce = true;   // merge received TCP segments into one TUN write (needs tunOffload)
  // Not an optimisation: the AllowedIPs check on received datagrams. Off only to measure its cost.
  bool innerSourceCheck = true;
};

/** What actually got enabled (the kernel may refuse some options). */
struct Features {
  int workers = 0;
  bool multiQueue = false, vnetHdr = false, tso = false, udpGso = false, udpGro = false, tunCoalesce = false;
  int sndBuf = 0, rcvBuf = 0;
};

class Worker;

class Forwarder {
 public:
  ~Forwarder();
  /** Opens the devices and starts the workers; on failure returns null and sets `error`. */
  static std::unique_ptr<Forwarder> start(const ForwarderOptions& opts, std::string* error);

  /** Publishes a new table; workers pick it up at their next batch. */
  void setTable(std::shared_ptr<const RouteTable> table);
  /** Sum of every worker's counters. */
  void readCounters(std::vector<std::pair<const char*, uint64_t>>* out) const;
  const Features& features() const { return features_; }
  /** Non-zero errno once a TUN queue failed (e.g. the device was deleted); the data path is down. */
  int tunFailure() const { return tunFailure_.load(std::memory_order_relaxed); }
  /** Stops and joins the workers, then closes every fd. Idempotent. */
  void stop();

 private:
  friend class Worker;
  Forwarder() = default;
  bool open(const ForwarderOptions& opts, std::string* error);
  std::shared_ptr<const RouteTable> currentTable(uint64_t* version);

  ForwarderOptions opts_;
  Features features_;
  std::vector<int> tunFds_, udpFds_;
  int stopFd_ = -1;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<pthread_t> threads_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  std::atomic<bool> gsoUsable_{true};  // cleared if the egress device turns out not to support it
  std::atomic<int> tunFailure_{0};     // errno of the first failed TUN read; 0 while the TUN works

  // Table publication: the version is read lock-free on every batch; the mutex is taken only
  // by a worker that saw a new version, to copy the pointer.
  std::mutex tableMu_;
  std::shared_ptr<const RouteTable> table_ = std::make_shared<RouteTable>();
  std::atomic<uint64_t> tableVersion_{0};
};

}  // namespace fl
