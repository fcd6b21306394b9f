// rtnetlink for the vxlan backend's tables (see src/routes/netlink.ts for the typed wrapper): one
// NETLINK_ROUTE socket opened in the node's network namespace; route, neighbour and FDB entries
// sent as batches of messages with one ACK each (the kernel's verdict per entry, with its extended
// ACK message); dumps of the three tables filtered and flattened here, on a worker thread, with a
// digest so that an unchanged kernel costs JavaScript nothing. Separate from the udp data path.
#include <napi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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

// One op, as src/routes/netlink.ts packs it: OP_WORDS uint32 each.
constexpr size_t OP_WORDS = 8;
constexpr int RECV_TIMEOUT_S = 10;
enum Kind : uint32_t { FDB = 0, NEIGH = 1, ROUTE = 2 };

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

// Appends the message for op `o` (host-order addresses) to buf, with sequence number seq.
void buildOp(std::vector<char>& buf, const uint32_t* o, uint32_t seq) {
  uint32_t kind = o[0] & 0xff;
  bool del = (o[0] >> 8) & 1;
  uint32_t ifindex = o[1];
  uint32_t ip = htonl(o[2]);
  uint32_t prefixLen = o[3];
  uint32_t gw = htonl(o[4]);
  bool onlink = o[5] & 1;
  unsigned char mac[6] = {(unsigned char)(o[6] >> 8), (unsigned char)o[6], (unsigned char)(o[7] >> 24),
                          (unsigned char)(o[7] >> 16), (unsigned char)(o[7] >> 8), (unsigned char)o[7]};
  size_t start = buf.size();
  size_t body = kind == ROUTE ? sizeof(rtmsg) : sizeof(ndmsg);
  buf.resize(start + NLMSG_SPACE(body), 0);
  auto* n = reinterpret_cast<nlmsghdr*>(buf.data() + start);
  n->nlmsg_len = NLMSG_LENGTH(body);
  n->nlmsg_seq = seq;
  n->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (del ? 0 : NLM_F_CREATE | NLM_F_REPLACE);
  if (kind == ROUTE) {
    n->nlmsg_type = del ? RTM_DELROUTE : RTM_NEWROUTE;
    auto* r = reinterpret_cast<rtmsg*>(NLMSG_DATA(n));
    r->rtm_family = AF_INET;
    r->rtm_dst_len = prefixLen;
    r->rtm_table = RT_TABLE_MAIN;
    r->rtm_protocol = del ? 0 : RTPROT_BOOT;  // what `ip route replace` sets
    r->rtm_scope = del ? RT_SCOPE_NOWHERE : RT_SCOPE_UNIVERSE;
    r->rtm_type = del ? 0 : RTN_UNICAST;
    r->rtm_flags = onlink ? RTNH_F_ONLINK : 0;
    addAttr(buf, start, RTA_DST, &ip, 4);
    if (o[4] != 0) addAttr(buf, start, RTA_GATEWAY, &gw, 4);
    addAttr(buf, start, RTA_OIF, &ifindex, 4);
  } else {
    n->nlmsg_type = del ? RTM_DELNEIGH : RTM_NEWNEIGH;
    auto* nd = reinterpret_cast<ndmsg*>(NLMSG_DATA(n));
    nd->ndm_family = kind == FDB ? AF_BRIDGE : AF_INET;
    nd->ndm_ifindex = ifindex;
    nd->ndm_state = NUD_PERMANENT;
    if (kind == FDB) {
      nd->ndm_flags = NTF_SELF;
      addAttr(buf, start, NDA_LLADDR, mac, 6);
      addAttr(buf, start, NDA_DST, &ip, 4);
    } else {
      addAttr(buf, start, NDA_DST, &ip, 4);
      if (!del) addAttr(buf, start, NDA_LLADDR, mac, 6);
    }
  }
}

// Opens a NETLINK_ROUTE socket inside the namespace at `path` (empty: ours). The namespace is
// entered only around socket(): a socket stays in the namespace it was created in.
int openSocket(const std::string& path, std::string* error) {
  int self = -1, target = -1;
  if (!path.empty()) {
    self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (self < 0 || target < 0 || setns(target, CLONE_NEWNET) < 0) {
      *error = "cannot enter network namespace " + path + ": " + strerror(errno);
      if (self >= 0) close(self);
      if (target >= 0) close(target);
      return -1;
    }
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int saved = errno;
  if (self >= 0) {
    if (setns(self, CLONE_NEWNET) < 0) abort();  // never leave the JS thread in another namespace
    close(self);
    close(target);
  }
  if (fd < 0) {
    *error = std::string("netlink socket: ") + strerror(saved);
    return -1;
  }
  int one = 1, rcv = 4 << 20;
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  // The kernel answers every request; should it ever not, a call fails instead of holding the
  // backend's kernel queue forever.
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

class DumpWorker : public Napi::AsyncWorker {
 public:
  DumpWorker(Napi::Env env, std::shared_ptr<Socket> sock, uint32_t ifindex, std::string lastDigest)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), sock_(std::move(sock)), ifindex_(ifindex), last_(std::move(lastDigest)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  // Routes: [dst, prefixLen, gateway, oif, protocol] for unicast main-table IPv4 routes.
  // Neighbours on the device: [ip, state, macHi, macLo, hasMac]. FDB on the device: [macHi, macLo, dst, state].
  void Execute() override {
    std::lock_guard<std::mutex> lock(sock_->mu);
    if (!dump(RTM_GETROUTE, AF_INET) || !dump(RTM_GETNEIGH, AF_INET) || !dump(RTM_GETNEIGH, AF_BRIDGE)) return;
    uint64_t h = 14695981039346656037ull;
    h = fnv(h, routes_);
    h = fnv(h ^ 1, neighs_);
    h = fnv(h ^ 2, fdb_);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    digest_ = hex;
  }

  void OnOK() override {
    Napi::Env env = Env();
    auto result = Napi::Object::New(env);
    result.Set("digest", digest_);
    if (digest_ != last_) {
      auto copy = [&](const std::vector<uint32_t>& v) {
        auto a = Napi::Uint32Array::New(env, v.size());
        if (!v.empty()) memcpy(a.Data(), v.data(), v.size() * 4);
        return a;
      };
      result.Set("routes", copy(routes_));
      result.Set("neighs", copy(neighs_));
      result.Set("fdb", copy(fdb_));
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
      };
    } req{};
    req.n.nlmsg_len = NLMSG_LENGTH(type == RTM_GETROUTE ? sizeof(rtmsg) : sizeof(ndmsg));
    req.n.nlmsg_type = type;
    req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.n.nlmsg_seq = sock_->seq++;
    if (type == RTM_GETROUTE) req.r.rtm_family = family;
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
        if (type == RTM_GETROUTE) route(h);
        else if (family == AF_INET) neigh(h);
        else fdbEntry(h);
      }
    }
  }

  void route(nlmsghdr* h) {
    auto* r = reinterpret_cast<rtmsg*>(NLMSG_DATA(h));
    if (r->rtm_family != AF_INET || r->rtm_type != RTN_UNICAST) return;
    uint32_t table = r->rtm_table, dst = 0, gw = 0, oif = 0;
    int len = (int)RTM_PAYLOAD(h);
    for (auto* a = RTM_RTA(r); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == RTA_TABLE) table = *(uint32_t*)RTA_DATA(a);
      else if (a->rta_type == RTA_DST) dst = ntohl(*(uint32_t*)RTA_DATA(a));
      else if (a->rta_type == RTA_GATEWAY) gw = ntohl(*(uint32_t*)RTA_DATA(a));
      else if (a->rta_type == RTA_OIF) oif = *(uint32_t*)RTA_DATA(a);
    }
    if (table != RT_TABLE_MAIN) return;
    routes_.insert(routes_.end(), {dst, r->rtm_dst_len, gw, oif, r->rtm_protocol});
  }

  void neigh(nlmsghdr* h) {
    auto* nd = reinterpret_cast<ndmsg*>(NLMSG_DATA(h));
    if ((uint32_t)nd->ndm_ifindex != ifindex_) return;
    uint32_t ip = 0, hi = 0, lo = 0, hasMac = 0;
    int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(ndmsg)));
    for (auto* a = (rtattr*)((char*)nd + NLMSG_ALIGN(sizeof(ndmsg))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == NDA_DST && RTA_PAYLOAD(a) == 4) ip = ntohl(*(uint32_t*)RTA_DATA(a));
      else if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
        auto* m = (unsigned char*)RTA_DATA(a);
        hi = (m[0] << 8) | m[1];
        lo = ((uint32_t)m[2] << 24) | (m[3] << 16) | (m[4] << 8) | m[5];
        hasMac = 1;
      }
    }
    neighs_.insert(neighs_.end(), {ip, nd->ndm_state, hi, lo, hasMac});
  }

  void fdbEntry(nlmsghdr* h) {
    auto* nd = reinterpret_cast<ndmsg*>(NLMSG_DATA(h));
    if ((uint32_t)nd->ndm_ifindex != ifindex_) return;
    uint32_t dst = 0, hi = 0, lo = 0, hasDst = 0;
    int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(ndmsg)));
    for (auto* a = (rtattr*)((char*)nd + NLMSG_ALIGN(sizeof(ndmsg))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == NDA_DST && RTA_PAYLOAD(a) == 4) {
        dst = ntohl(*(uint32_t*)RTA_DATA(a));
        hasDst = 1;
      } else if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
        auto* m = (unsigned char*)RTA_DATA(a);
        hi = (m[0] << 8) | m[1];
        lo = ((uint32_t)m[2] << 24) | (m[3] << 16) | (m[4] << 8) | m[5];
      }
    }
    if (hasDst) fdb_.insert(fdb_.end(), {hi, lo, dst, nd->ndm_state});
  }

  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Socket> sock_;
  uint32_t ifindex_;
  std::string last_, digest_;
  std::vector<uint32_t> routes_, neighs_, fdb_;
};

class RtNetlink : public Napi::ObjectWrap<RtNetlink> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RtNetlink", {InstanceMethod("apply", &RtNetlink::Apply), InstanceMethod("dump", &RtNetlink::Dump), InstanceMethod("close", &RtNetlink::Close)});
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
      Napi::TypeError::New(info.Env(), "ops length must be a multiple of 8").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::vector<uint32_t> copy(ops.Data(), ops.Data() + ops.ElementLength());
    auto* w = new ApplyWorker(info.Env(), sock_, std::move(copy));
    auto p = w->Promise();
    w->Queue();
    return p;
  }

  // dump(ifindex: number, lastDigest: string) → Promise<{ digest, routes?, neighs?, fdb? }>
  Napi::Value Dump(const Napi::CallbackInfo& info) {
    if (!sock_ || info.Length() < 2 || !info[0].IsNumber() || !info[1].IsString()) {
      Napi::TypeError::New(info.Env(), "dump(ifindex: number, lastDigest: string) on an open socket").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    auto* w = new DumpWorker(info.Env(), sock_, info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::String>().Utf8Value());
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
