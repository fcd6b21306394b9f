#include "forwarder.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "devices.h"
#include "netns.h"
#include "worker.h"

namespace fl {

Forwarder::~Forwarder() { stop(); }

std::unique_ptr<Forwarder> Forwarder::start(const ForwarderOptions& opts, std::string* error) {
  std::unique_ptr<Forwarder> f(new Forwarder());
  f->opts_ = opts;
  f->opts_.workers = std::clamp(opts.workers, 1, 16);
  // Devices belong to the network namespace of the thread that creates them (netns.h).
  Forwarder* fwd = f.get();
  if (!runInNetns(opts.netnsPath, [fwd](std::string* err) { return fwd->open(fwd->opts_, err); }, error)) return nullptr;

  for (size_t i = 0; i < f->tunFds_.size(); i++) {
    auto w = std::make_unique<Worker>(*f, f->tunFds_[i], f->udpFds_[i], f->stopFd_);
    if (!w->init(error)) return nullptr;
    f->workers_.push_back(std::move(w));
  }
  // Workers must not take signals meant for Node's main thread.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (size_t i = 0; i < f->workers_.size(); i++) {
    pthread_t t;
    auto body = [](void* arg) -> void* {
      static_cast<Worker*>(arg)->run();
      return nullptr;
    };
    if (pthread_create(&t, nullptr, body, f->workers_[i].get()) != 0) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      *error = "cannot start a forwarding thread";
      return nullptr;  // the destructor stops the ones already running
    }
    std::string name = "flannel-udp-" + std::to_string(i);
    pthread_setname_np(t, name.c_str());
    f->threads_.push_back(t);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return f;
}

bool Forwarder::open(const ForwarderOptions& o, std::string* error) {
  TunRequest tr;
  tr.name = o.tunName;
  tr.queues = o.workers;
  tr.mtu = o.mtu;
  tr.vnetHdr = o.tunOffload;
  tr.tso = o.tunOffload;
  TunResult tun;
  if (!openTun(tr, &tun, error)) return false;
  tunFds_ = tun.fds;

  UdpRequest ur;
  ur.bindAddr = o.bindAddr;
  ur.port = o.port;
  ur.sockets = static_cast<int>(tunFds_.size());
  ur.bufferBytes = o.socketBufferBytes;
  ur.gro = o.udpGro;
  UdpResult udp;
  if (!openUdp(ur, &udp, error)) {
    closeAll(&tunFds_);
    return false;
  }
  udpFds_ = udp.fds;

  stopFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stopFd_ < 0) {
    *error = std::string("eventfd: ") + strerror(errno);
    closeAll(&tunFds_);
    closeAll(&udpFds_);
    return false;
  }
  features_.workers = static_cast<int>(tunFds_.size());
  features_.multiQueue = tun.multiQueue;
  features_.vnetHdr = tun.vnetHdr;
  features_.tso = tun.tso;
  features_.udpGso = o.udpGso && udpGsoSupported(udpFds_[0]);
  features_.udpGro = udp.gro;
  features_.tunCoalesce = o.tunCoalesce && tun.vnetHdr;
  features_.sndBuf = udp.sndBuf;
  features_.rcvBuf = udp.rcvBuf;
  return true;
}

void Forwarder::setTable(std::shared_ptr<const RouteTable> table) {
  std::lock_guard<std::mutex> lock(tableMu_);
  table_ = std::move(table);
  tableVersion_.fetch_add(1, std::memory_order_release);
}

std::shared_ptr<const RouteTable> Forwarder::currentTable(uint64_t* version) {
  std::lock_guard<std::mutex> lock(tableMu_);
  *version = tableVersion_.load(std::memory_order_relaxed);
  return table_;
}

void Forwarder::readCounters(std::vector<std::pair<const char*, uint64_t>>* out) const {
  out->clear();
#define FL_SUM(name)                                                          \
  {                                                                           \
    uint64_t total = 0;                                                       \
    for (const auto& w : workers_) total += w->counters().name.load(std::memory_order_relaxed); \
    out->emplace_back(#name, total);                                          \
  }
  FL_COUNTERS(FL_SUM)
#undef FL_SUM
  uint64_t largest = 0;
  for (const auto& w : workers_) largest = std::max<uint64_t>(largest, w->counters().rxMaxDatagram.load(std::memory_order_relaxed));
  out->emplace_back("rxMaxDatagram", largest);
}

void Forwarder::stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true, std::memory_order_relaxed);
  if (stopFd_ >= 0) {
    uint64_t one = 1;
    ssize_t ignored = write(stopFd_, &one, sizeof(one));
    (void)ignored;
  }
  for (pthread_t t : threads_) pthread_join(t, nullptr);
  threads_.clear();
  for (auto& w : workers_) w->closeEpoll();  // workers stay: their counters remain readable
  closeAll(&tunFds_);
  closeAll(&udpFds_);
  if (stopFd_ >= 0) close(stopFd_);
  stopFd_ = -1;
}

}  // namespace fl
