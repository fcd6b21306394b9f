// rtnetlink for the kernel tables the reconciler looks after (src/routes/netlink.ts is the typed
// wrapper): one NETLINK_ROUTE socket opened in the node's network namespace (netns.h); routes
// (unicast and blackhole), neighbours and FDB entries of both families sent as batches of messages
// with one ACK each (the kernel's verdict per entry, with its extended ACK message); dumps of the
// three tables filtered and flattened here, on a worker thread, with a digest so that an unchanged
// kernel costs JavaScript nothing. Separate from the udp data path.
#include <napi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "netns.h"

namespace {

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NLM_F_ACK_TLVS
#define NLM_F_ACK_TLVS 0x200
#endif
#ifndef NLMSGERR_ATTR_MSG
#define NLMSGERR_ATTR_MSG 1
#endif

// One op, as src/routes/netlink.ts packs it: OP_WORDS uint32 each —
//   [flags | kind, ifindex, prefixLen, addr x4, gateway x4, macHi, macLo, protocol, metric]
// Addresses are host-order 32-bit words, most significant first (an IPv4 address is the first word).
// addr is the route's destination, the neighbour's address or the FDB entry's destination.
constexpr size_t OP_WORDS = 15;
constexpr int RECV_TIMEOUT_S = 10;
enum Kind : uint32_t { FDB = 0, NEIGH = 1, ROUTE = 2 };
enum OpFlag : uint32_t {
  OP_DELETE = 1u << 8,
  OP_V6 = 1u << 9,         // the address (and gateway) is IPv6
  OP_BLACKHOLE = 1u << 10,  // routes: type blackhole, no device
  OP_ONLINK = 1u << 11,
  OP_GATEWAY = 1u << 12,
  OP_PROTOCOL = 1u << 13,  // deletions: only the route of this protocol
  OP_METRIC = 1u << 14,    // deletions: only the route of this metric
};

// Host-order words (most significant first) to network-order bytes: 4 or 16 of them.
void addrBytes(const uint32_t* w, bool v6, unsigned char* out) {
  for (int i = 0; i < (v6 ? 4 : 1); i++) {
    uint32_t n = htonl(w[i]);
    memcpy(out + 4 * i, &n, 4);
  }
}

void addrWords(const void* data, size_t len, uint32_t* out) {
  out[0] = out[1] = out[2] = out[3] = 0;
  for (size_t i = 0; i < len / 4 && i < 4; i++) {
    uint32_t n;
    memcpy(&n, (const char*)data + 4 * i, 4);
    out[i] = ntohl(n);
  }
}

struct Socket {
  int fd = -1;
  std::mutex mu;
  uint32_t seq = 1;
  ~Socket() {
    if (fd >= 0) close(fd);
  }
};

void addAttr(std::vector<char>& buf, size_t msgStart, uint16_t type, const void* data, uint16_t len) {
  auto* n = reinterpret_cast<nlmsghdr*>(buf.data() + msgStart);
  size_t at = msgStart + NLMSG_ALIGN(n->nlmsg_len);
  buf.resize(at + RTA_ALIGN(RTA_LENGTH(len)), 0);
  n = reinterpret_cast<nlmsghdr*>(buf.data() + msgStart);
  auto* rta = reinterpret_cast<rtattr*>(buf.data() + at);
  rta->rta_type = type;
  rta->rta_len = RTA_LENGTH(len);
  memcpy(RTA_DATA(rta), data, len);
  n->nlmsg_len = NLMSG_ALIGN(n->nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

// Appends the message for op `o` to buf, with sequence number seq.
void buildOp(std::vector<char>& buf, const uint32_t* o, uint32_t seq) {
  uint32_t kind = o[0] & 0xff;
  bool del = o[0] & OP_DELETE;
  bool v6 = o[0] & OP_V6;
  bool blackhole = o[0] & OP_BLACKHOLE;
  uint16_t alen = v6 ? 16 : 4;
  uint32_t ifindex = o[1];
  uint32_t prefixLen = o[2];
  unsigned char addr[16], gw[16];
  addrBytes(&o[3], v6, addr);
  addrBytes(&o[7], v6, gw);
  unsigned char mac[6] = {(unsigned char)(o[11] >> 8), (unsigned char)o[11], (unsigned char)(o[12] >> 24),
                          (unsigned char)(o[12] >> 16), (unsigned char)(o[12] >> 8), (unsigned char)o[12]};
  size_t start = buf.size();
  size_t body = kind == ROUTE ? sizeof(rtmsg) : sizeof(ndmsg);
  buf.resize(start + NLMSG_SPACE(body), 0);
  auto* n = reinterpret_cast<nlmsghdr*>(buf.data() + start);
  n->nlmsg_len = NLMSG_LENGTH(body);
  n->nlmsg_seq = seq;
  // A blackhole is added, never replaced: replacing would take over whatever route holds its
  // destination (a bridge's own prefix route, say), as `ip route add blackhole` would not.
  n->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (del ? 0 : blackhole ? NLM_F_CREATE | NLM_F_EXCL : NLM_F_CREATE | NLM_F_REPLACE);
  if (kind == ROUTE) {
    n->nlmsg_type = del ? RTM_DELROUTE : RTM_NEWROUTE;
    auto* r = reinterpret_cast<rtmsg*>(NLMSG_DATA(n));
    r->rtm_family = v6 ? AF_INET6 : AF_INET;
    r->rtm_dst_len = prefixLen;
    r->rtm_table = RT_TABLE_MAIN;
    r->rtm_protocol = del ? ((o[0] & OP_PROTOCOL) ? o[13] : 0) : RTPROT_BOOT;  // what `ip route replace` sets
    r->rtm_scope = del ? RT_SCOPE_NOWHERE : RT_SCOPE_UNIVERSE;
    r->rtm_type = blackhole ? RTN_BLACKHOLE : RTN_UNICAST;
    r->rtm_flags = (o[0] & OP_ONLINK) ? RTNH_F_ONLINK : 0;
    addAttr(buf, start, RTA_DST, addr, alen);
    if (o[0] & OP_GATEWAY) addAttr(buf, start, RTA_GATEWAY, gw, alen);
    if (ifindex != 0) addAttr(buf, start, RTA_OIF, &ifindex, 4);
    if (del && (o[0] & OP_METRIC)) addAttr(buf, start, RTA_PRIORITY, &o[14], 4);
  } else {
    n->nlmsg_type = del ? RTM_DELNEIGH : RTM_NEWNEIGH;
    auto* nd = reinterpret_cast<ndmsg*>(NLMSG_DATA(n));
    nd->ndm_family = kind == FDB ? AF_BRIDGE : v6 ? AF_INET6 : AF_INET;
    nd->ndm_ifindex = ifindex;
    nd->ndm_state = NUD_PERMANENT;
    if (kind == FDB) {
      nd->ndm_flags = NTF_SELF;
      addAttr(buf, start, NDA_LLADDR, mac, 6);
      addAttr(buf, start, NDA_DST, addr, alen);
    } else {
      addAttr(buf, start, NDA_DST, addr, alen);
      if (!del) addAttr(buf, start, NDA_LLADDR, mac, 6);
    }
  }
}

// Opens a NETLINK_ROUTE socket inside the namespace at `path` (empty: ours). A socket stays in the
// namespace it was created in, so only socket() runs there (on a helper thread, netns.h).
int openSocket(const std::string& path, std::string* error) {
  int fd = -1;
  bool made = fl::runInNetns(path, [&fd](std::string* err) {
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) *err = std::string("netlink socket: ") + strerror(errno);
    return fd >= 0;
  }, error);
  if (!made) return -1;
  int one = 1, rcv = 4 << 20;
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  // The kernel answers every request; should it ever not, a call fails instead of holding the
  // reconciler's passes forever.
  timeval timeout{RECV_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    *error = std::string("netlink bind: ") + strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

// The kernel's verdict on op i: 0 or -errno, and its extended ACK message if it gave one.
struct Verdict {
  int32_t error = 1;  // 1 = no ACK seen
  std::string message;
};

class ApplyWorker : public Napi::AsyncWorker {
 public:
  ApplyWorker(Napi::Env env, std::shared_ptr<Socket> sock, std::vector<uint32_t> ops)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), sock_(std::move(sock)), ops_(std::move(ops)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    std::lock_guard<std::mutex> lock(sock_->mu);
    size_t count = ops_.size() / OP_WORDS;
    verdicts_.resize(count);
    std::vector<char> out;
    std::vector<char> in(1 << 20);
    constexpr size_t WINDOW = 256;  // messages per sendmsg; their ACKs are read before the next window
    for (size_t first = 0; first < count; first += WINDOW) {
      size_t last = std::min(count, first + WINDOW);
      out.clear();
      uint32_t seq0 = sock_->seq;
      for (size_t i = first; i < last; i++) buildOp(out, &ops_[i * OP_WORDS], sock_->seq++);
      if (send(sock_->fd, out.data(), out.size(), 0) != (ssize_t)out.size()) {
        SetError(std::string("netlink send: ") + strerror(errno));
        return;
      }
      for (size_t acked = 0; acked < last - first;) {
        ssize_t r = recv(sock_->fd, in.data(), in.size(), 0);
        if (r < 0) {
          if (errno == EINTR) continue;
          SetError(errno == EAGAIN ? "netlink: no answer from the kernel within 10 s" : std::string("netlink recv: ") + strerror(errno));
          return;
        }
        int len = (int)r;
        for (auto* h = reinterpret_cast<nlmsghdr*>(in.data()); NLMSG_OK(h, (unsigned)len); h = NLMSG_NEXT(h, len)) {
          if (h->nlmsg_type != NLMSG_ERROR) continue;
          uint32_t at = h->nlmsg_seq - seq0;
          if (at >= last - first) continue;  // a stray ACK of an earlier call
          auto* e = reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h));
          Verdict& v = verdicts_[first + at];
          if (v.error == 1) acked++;
          v.error = e->error;
          if (e->error != 0 && (h->nlmsg_flags & NLM_F_ACK_TLVS)) {
            // Extended ACK attributes follow the echoed request header (capped: only its header).
            size_t off = NLMSG_ALIGN(sizeof(nlmsgerr));
            if (!(h->nlmsg_flags & NLM_F_CAPPED)) off = NLMSG_ALIGN(sizeof(int) + e->msg.nlmsg_len);
            auto* attr = reinterpret_cast<rtattr*>((char*)NLMSG_DATA(h) + off);
            int alen = (int)h->nlmsg_len - (int)NLMSG_HDRLEN - (int)off;
            for (; RTA_OK(attr, alen); attr = RTA_NEXT(attr, alen)) {
              if (attr->rta_type == NLMSGERR_ATTR_MSG) v.message = std::string((const char*)RTA_DATA(attr), strnlen((const char*)RTA_DATA(attr), RTA_PAYLOAD(attr)));
            }
          }
        }
      }
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    auto errors = Napi::Int32Array::New(env, verdicts_.size());
    auto messages = Napi::Array::New(env);
    uint32_t k = 0;
    for (size_t i = 0; i < verdicts_.size(); i++) {
      errors[i] = verdicts_[i].error;
      if (verdicts_[i].error != 0) {
        std::string text = verdicts_[i].message.empty() ? strerror(-verdicts_[i].error) : verdicts_[i].message + " (" + strerror(-verdicts_[i].error) + ")";
        auto pair = Napi::Array::New(env, 2);
        pair.Set(0u, Napi::Number::New(env, (double)i));
        pair.Set(1u, Napi::String::New(env, text));
        messages.Set(k++, pair);
      }
    }
    auto result = Napi::Object::New(env);
    result.Set("errors", errors);
    result.Set("messages", messages);
    deferred_.Resolve(result);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Socket> sock_;
  std::vector<uint32_t> ops_;
  std::vector<Verdict> verdicts_;
};

// FNV-1a, 64 bit, over the flattened entries: what the tables hold, never timers or counters.
uint64_t fnv(uint64_t h, const std::vector<uint32_t>& words) {
  for (uint32_t w : words) {
    for (int b = 0; b < 4; b++) {
      h ^= (w >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return h;
}

// A prefix the dumped routes must lie inside: [family (4|6), prefixLen, addr x4].
struct Root {
  uint32_t family, prefixLen, addr[4];
};

bool inside(const Root& root, uint32_t family, uint32_t prefixLen, const uint32_t* dst) {
  if (root.family != family || prefixLen < root.prefixLen) return false;
  for (uint32_t bit = 0, i = 0; bit < root.prefixLen; bit += 32, i++) {
    uint32_t n = std::min<uint32_t>(32, root.prefixLen - bit);
    uint32_t mask = n == 32 ? 0xffffffffu : ~(0xffffffffu >> n);
    if ((dst[i] & mask) != (root.addr[i] & mask)) return false;
  }
  return true;
}

uint32_t macHi(const unsigned char* m) { return ((uint32_t)m[0] << 8) | m[1]; }
uint32_t macLo(const unsigned char* m) { return ((uint32_t)m[2] << 24) | ((uint32_t)m[3] << 16) | ((uint32_t)m[4] << 8) | m[5]; }

// Reads the tables in scope (or, with linksOnly, only the links) on a worker thread. The links
// (ifindex, name) name the devices of the entries; they are not part of the digest, whose entries
// name devices by index. The digest is one FNV-1a per table (routes, neighbours, FDB), so that the
// caller converts only the tables that changed since the dump it still holds.
class DumpWorker : public Napi::AsyncWorker {
 public:
  DumpWorker(Napi::Env env, std::shared_ptr<Socket> sock, std::vector<Root> roots, std::vector<std::string> devices, std::string lastDigest,
             std::string heldDigest, bool linksOnly)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), sock_(std::move(sock)), roots_(std::move(roots)),
        devices_(std::move(devices)), last_(std::move(lastDigest)), held_(std::move(heldDigest)), linksOnly_(linksOnly) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  // Routes: [family, type, prefixLen, dst x4, hasGateway, gateway x4, oif, protocol, flags, metric]
  //   for unicast and blackhole main-table routes inside a root.
  // Neighbours on the devices, with a link-layer address, not NOARP: [family, ifindex, ip x4, state, macHi, macLo].
  // FDB entries on the devices, with a destination: [ifindex, macHi, macLo, family, dst x4, state].
  void Execute() override {
    std::lock_guard<std::mutex> lock(sock_->mu);
    if (!dump(RTM_GETLINK, AF_UNSPEC) || linksOnly_) return;
    bool v4 = false, v6 = false;
    for (const Root& r : roots_) (r.family == 6 ? v6 : v4) = true;
    if (v4 && !dump(RTM_GETROUTE, AF_INET)) return;
    if (v6 && !dump(RTM_GETROUTE, AF_INET6)) return;
    if (!ifindexes_.empty() && (!dump(RTM_GETNEIGH, AF_UNSPEC) || !dump(RTM_GETNEIGH, AF_BRIDGE))) return;
    const uint64_t basis = 14695981039346656037ull;
    char hex[49];
    snprintf(hex, sizeof hex, "%016llx%016llx%016llx", (unsigned long long)fnv(basis, routes_), (unsigned long long)fnv(basis ^ 1, neighs_),
             (unsigned long long)fnv(basis ^ 2, fdb_));
    digest_ = hex;
  }

  void OnOK() override {
    Napi::Env env = Env();
    auto links = Napi::Array::New(env, links_.size());
    for (size_t i = 0; i < links_.size(); i++) {
      auto pair = Napi::Array::New(env, 2);
      pair.Set(0u, Napi::Number::New(env, links_[i].first));
      pair.Set(1u, Napi::String::New(env, links_[i].second));
      links.Set((uint32_t)i, pair);
    }
    if (linksOnly_) {
      deferred_.Resolve(links);
      return;
    }
    auto result = Napi::Object::New(env);
    result.Set("digest", digest_);
    result.Set("links", links);
    if (digest_ != last_) {
      auto copy = [&](const std::vector<uint32_t>& v) {
        auto a = Napi::Uint32Array::New(env, v.size());
        if (!v.empty()) memcpy(a.Data(), v.data(), v.size() * 4);
        return a;
      };
      // A table whose part of the digest equals the one of the dump the caller holds is left out.
      auto changed = [&](size_t part) { return held_.size() != digest_.size() || held_.compare(16 * part, 16, digest_, 16 * part, 16) != 0; };
      if (changed(0)) result.Set("routes", copy(routes_));
      if (changed(1)) result.Set("neighs", copy(neighs_));
      if (changed(2)) result.Set("fdb", copy(fdb_));
    }
    deferred_.Resolve(result);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  bool dump(uint16_t type, uint8_t family) {
    struct {
      nlmsghdr n;
      union {
        rtmsg r;
        ndmsg nd;
        ifinfomsg ifi;
      };
    } req{};
    size_t body = type == RTM_GETROUTE ? sizeof(rtmsg) : type == RTM_GETLINK ? sizeof(ifinfomsg) : sizeof(ndmsg);
    req.n.nlmsg_len = NLMSG_LENGTH(body);
    req.n.nlmsg_type = type;
    req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.n.nlmsg_seq = sock_->seq++;
    if (type == RTM_GETROUTE) req.r.rtm_family = family;
    else if (type == RTM_GETLINK) req.ifi.ifi_family = family;
    else req.nd.ndm_family = family;
    if (send(sock_->fd, &req, req.n.nlmsg_len, 0) < 0) {
      SetError(std::string("netlink dump: ") + strerror(errno));
      return false;
    }
    std::vector<char> in(1 << 20);
    for (;;) {
      ssize_t r = recv(sock_->fd, in.data(), in.size(), 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        SetError(errno == EAGAIN ? "netlink dump: no answer from the kernel within 10 s" : std::string("netlink dump recv: ") + strerror(errno));
        return false;
      }
      int len = (int)r;
      for (auto* h = reinterpret_cast<nlmsghdr*>(in.data()); NLMSG_OK(h, (unsigned)len); h = NLMSG_NEXT(h, len)) {
        if (h->nlmsg_seq != req.n.nlmsg_seq) continue;
        if (h->nlmsg_type == NLMSG_DONE) return true;
        if (h->nlmsg_type == NLMSG_ERROR) {
          int err = reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
          if (err == 0) return true;
          SetError(std::string("netlink dump: ") + strerror(-err));
          return false;
        }
        if (type == RTM_GETLINK) link(h);
        else if (type == RTM_GETROUTE) route(h);
        else if (family == AF_BRIDGE) fdbEntry(h);
        else neigh(h);
      }
    }
  }

  void link(nlmsghdr* h) {
    if (h->nlmsg_type != RTM_NEWLINK) return;
    auto* ifi = reinterpret_cast<ifinfomsg*>(NLMSG_DATA(h));
    int len = (int)IFLA_PAYLOAD(h);
    for (auto* a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type != IFLA_IFNAME) continue;
      std::string name((const char*)RTA_DATA(a), strnlen((const char*)RTA_DATA(a), RTA_PAYLOAD(a)));
      links_.emplace_back((uint32_t)ifi->ifi_index, name);
      for (const std::string& d : devices_)
        if (d == name) ifindexes_.push_back((uint32_t)ifi->ifi_index);
    }
  }

  bool onDevice(int ifindex) const {
    for (uint32_t i : ifindexes_)
      if (i == (uint32_t)ifindex) return true;
    return false;
  }

  void route(nlmsghdr* h) {
    auto* r = reinterpret_cast<rtmsg*>(NLMSG_DATA(h));
    if ((r->rtm_family != AF_INET && r->rtm_family != AF_INET6) || (r->rtm_type != RTN_UNICAST && r->rtm_type != RTN_BLACKHOLE)) return;
    uint32_t family = r->rtm_family == AF_INET6 ? 6 : 4;
    uint32_t table = r->rtm_table, oif = 0, metric = 0, hasGw = 0;
    uint32_t dst[4] = {0, 0, 0, 0}, gw[4] = {0, 0, 0, 0};
    int len = (int)RTM_PAYLOAD(h);
    for (auto* a = RTM_RTA(r); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == RTA_TABLE) table = *(uint32_t*)RTA_DATA(a);
      else if (a->rta_type == RTA_DST) addrWords(RTA_DATA(a), RTA_PAYLOAD(a), dst);
      else if (a->rta_type == RTA_GATEWAY) {
        addrWords(RTA_DATA(a), RTA_PAYLOAD(a), gw);
        hasGw = 1;
      } else if (a->rta_type == RTA_OIF) oif = *(uint32_t*)RTA_DATA(a);
      else if (a->rta_type == RTA_PRIORITY) metric = *(uint32_t*)RTA_DATA(a);
    }
    if (table != RT_TABLE_MAIN) return;
    bool wanted = false;
    for (const Root& root : roots_) wanted = wanted || inside(root, family, r->rtm_dst_len, dst);
    if (!wanted) return;
    routes_.insert(routes_.end(), {family, r->rtm_type, r->rtm_dst_len, dst[0], dst[1], dst[2], dst[3], hasGw, gw[0], gw[1], gw[2], gw[3],
                                   oif, r->rtm_protocol, r->rtm_flags, metric});
  }

  void neigh(nlmsghdr* h) {
    auto* nd = reinterpret_cast<ndmsg*>(NLMSG_DATA(h));
    if ((nd->ndm_family != AF_INET && nd->ndm_family != AF_INET6) || !onDevice(nd->ndm_ifindex)) return;
    uint32_t ip[4] = {0, 0, 0, 0}, hi = 0, lo = 0;
    bool hasIp = false, hasMac = false;
    int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(ndmsg)));
    for (auto* a = (rtattr*)((char*)nd + NLMSG_ALIGN(sizeof(ndmsg))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == NDA_DST && (RTA_PAYLOAD(a) == 4 || RTA_PAYLOAD(a) == 16)) {
        addrWords(RTA_DATA(a), RTA_PAYLOAD(a), ip);
        hasIp = true;
      } else if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
        hi = macHi((unsigned char*)RTA_DATA(a));
        lo = macLo((unsigned char*)RTA_DATA(a));
        hasMac = true;
      }
    }
    // NOARP entries are the kernel's own (IPv6 multicast groups), never an entry of ours.
    if (!hasIp || !hasMac || (nd->ndm_state & NUD_NOARP)) return;
    // Only "permanent or not" is kept: a dynamic entry ageing (REACHABLE → STALE) must not change the digest.
    neighs_.insert(neighs_.end(), {nd->ndm_family == AF_INET6 ? 6u : 4u, (uint32_t)nd->ndm_ifindex, ip[0], ip[1], ip[2], ip[3], (uint32_t)(nd->ndm_state & NUD_PERMANENT), hi, lo});
  }

  void fdbEntry(nlmsghdr* h) {
    auto* nd = reinterpret_cast<ndmsg*>(NLMSG_DATA(h));
    if (!onDevice(nd->ndm_ifindex)) return;
    uint32_t dst[4] = {0, 0, 0, 0}, hi = 0, lo = 0, family = 0;
    int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(ndmsg)));
    for (auto* a = (rtattr*)((char*)nd + NLMSG_ALIGN(sizeof(ndmsg))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == NDA_DST && (RTA_PAYLOAD(a) == 4 || RTA_PAYLOAD(a) == 16)) {
        addrWords(RTA_DATA(a), RTA_PAYLOAD(a), dst);
        family = RTA_PAYLOAD(a) == 16 ? 6 : 4;
      } else if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
        hi = macHi((unsigned char*)RTA_DATA(a));
        lo = macLo((unsigned char*)RTA_DATA(a));
      }
    }
    if (family == 0 || (hi == 0 && lo == 0)) return;  // no destination, or the all-zero default entry
    fdb_.insert(fdb_.end(), {(uint32_t)nd->ndm_ifindex, hi, lo, family, dst[0], dst[1], dst[2], dst[3], (uint32_t)(nd->ndm_state & NUD_PERMANENT)});
  }

  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Socket> sock_;
  std::vector<Root> roots_;
  std::vector<std::string> devices_;
  std::string last_, held_, digest_;
  bool linksOnly_;
  std::vector<std::pair<uint32_t, std::string>> links_;
  std::vector<uint32_t> ifindexes_;
  std::vector<uint32_t> routes_, neighs_, fdb_;
};

class RtNetlink : public Napi::ObjectWrap<RtNetlink> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RtNetlink", {InstanceMethod("apply", &RtNetlink::Apply), InstanceMethod("dump", &RtNetlink::Dump),
                                          InstanceMethod("links", &RtNetlink::Links), InstanceMethod("close", &RtNetlink::Close)});
  }

  explicit RtNetlink(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RtNetlink>(info) {
    std::string path;
    if (info.Length() > 0 && info[0].IsString()) path = info[0].As<Napi::String>().Utf8Value();
    std::string error;
    int fd = openSocket(path, &error);
    if (fd < 0) {
      Napi::Error::New(info.Env(), error).ThrowAsJavaScriptException();
      return;
    }
    sock_ = std::make_shared<Socket>();
    sock_->fd = fd;
  }

 private:
  // apply(ops: Uint32Array) → Promise<{ errors: Int32Array, messages: [index, text][] }>
  Napi::Value Apply(const Napi::CallbackInfo& info) {
    if (!sock_ || info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
      Napi::TypeError::New(info.Env(), "apply(ops: Uint32Array) on an open socket").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    auto ops = info[0].As<Napi::Uint32Array>();
    if (ops.ElementLength() % OP_WORDS != 0) {
      Napi::TypeError::New(info.Env(), "ops length must be a multiple of " + std::to_string(OP_WORDS)).ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::vector<uint32_t> copy(ops.Data(), ops.Data() + ops.ElementLength());
    auto* w = new ApplyWorker(info.Env(), sock_, std::move(copy));
    auto p = w->Promise();
    w->Queue();
    return p;
  }

  // dump(roots: Uint32Array, devices: string[], lastDigest: string, heldDigest: string)
  //   → Promise<{ digest, links: [ifindex, name][], routes?, neighs?, fdb? }>
  // No table when the digest is lastDigest; otherwise each table whose part differs from heldDigest's.
  Napi::Value Dump(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!sock_ || info.Length() < 4 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
        !info[1].IsArray() || !info[2].IsString() || !info[3].IsString()) {
      Napi::TypeError::New(env, "dump(roots: Uint32Array, devices: string[], lastDigest: string, heldDigest: string) on an open socket")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto flat = info[0].As<Napi::Uint32Array>();
    if (flat.ElementLength() % 6 != 0) {
      Napi::TypeError::New(env, "roots length must be a multiple of 6").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::vector<Root> roots;
    for (size_t i = 0; i < flat.ElementLength(); i += 6) roots.push_back(Root{flat[i], flat[i + 1], {flat[i + 2], flat[i + 3], flat[i + 4], flat[i + 5]}});
    std::vector<std::string> devices;
    auto list = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value v = list.Get(i);
      if (v.IsString()) devices.push_back(v.As<Napi::String>().Utf8Value());
    }
    auto* w = new DumpWorker(env, sock_, std::move(roots), std::move(devices), info[2].As<Napi::String>().Utf8Value(), info[3].As<Napi::String>().Utf8Value(),
                             false);
    auto p = w->Promise();
    w->Queue();
    return p;
  }

  // links() → Promise<[ifindex, name][]>
  Napi::Value Links(const Napi::CallbackInfo& info) {
    if (!sock_) {
      Napi::TypeError::New(info.Env(), "links() on an open socket").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    auto* w = new DumpWorker(info.Env(), sock_, {}, {}, "", "", true);
    auto p = w->Promise();
    w->Queue();
    return p;
  }

  // The socket closes once no worker holds it any more.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    sock_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<Socket> sock_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("RtNetlink", RtNetlink::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(flannel_netlink, Init)
