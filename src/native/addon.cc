// JavaScript binding of the udp backend's data path (see src/backend/udp/native.ts for the typed
// wrapper). Only configuration and counters cross this boundary; packets never do.
#include <napi.h>

#include <string.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "forwarder.h"
#include "route_table.h"

namespace {

// Every reader returns false after throwing a TypeError that names the offending field.
bool readString(Napi::Object obj, const char* key, std::string* out, bool required) {
  Napi::Value v = obj.Get(key);
  if (v.IsUndefined() && !required) return true;
  if (!v.IsString()) {
    Napi::TypeError::New(obj.Env(), std::string(key) + " must be a string").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool readNumber(Napi::Object obj, const char* key, double min, double max, double* out, bool required) {
  Napi::Value v = obj.Get(key);
  if (v.IsUndefined() && !required) return true;
  if (!v.IsNumber()) {
    Napi::TypeError::New(obj.Env(), std::string(key) + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < min || d > max) {
    Napi::TypeError::New(obj.Env(), std::string(key) + " must be an integer between " + std::to_string((long long)min) +
                                        " and " + std::to_string((long long)max))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = d;
  return true;
}

bool readBool(Napi::Object obj, const char* key, bool* out) {
  Napi::Value v = obj.Get(key);
  if (v.IsUndefined()) return true;
  if (!v.IsBoolean()) {
    Napi::TypeError::New(obj.Env(), std::string(key) + " must be a boolean").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

class UdpForwarder : public Napi::ObjectWrap<UdpForwarder> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UdpForwarder",
                       {
                           InstanceMethod("setTable", &UdpForwarder::SetTable),
                           InstanceMethod("stats", &UdpForwarder::Stats),
                           InstanceMethod("features", &UdpForwarder::Features),
                           InstanceMethod("failure", &UdpForwarder::Failure),
                           InstanceMethod("close", &UdpForwarder::Close),
                       });
  }

  explicit UdpForwarder(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UdpForwarder>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
      Napi::TypeError::New(env, "UdpForwarder(options): options must be an object").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    fl::ForwarderOptions opts;
    double mtu = 0, bind = 0, port = 0, workers = 1, buf = opts.socketBufferBytes;
    if (!readString(o, "tunName", &opts.tunName, true) || !readNumber(o, "mtu", 68, 65535, &mtu, true) ||
        !readNumber(o, "bindAddress", 0, 4294967295.0, &bind, true) || !readNumber(o, "port", 1, 65535, &port, true) ||
        !readNumber(o, "workers", 1, 16, &workers, false) || !readString(o, "netnsPath", &opts.netnsPath, false) ||
        !readNumber(o, "socketBufferBytes", 65536, 1 << 30, &buf, false) || !readBool(o, "batch", &opts.batch) ||
        !readBool(o, "tunOffload", &opts.tunOffload) || !readBool(o, "udpGso", &opts.udpGso) ||
        !readBool(o, "udpGro", &opts.udpGro) || !readBool(o, "tunCoalesce", &opts.tunCoalesce) ||
        !readBool(o, "innerSourceCheck", &opts.innerSourceCheck))
      return;
    opts.mtu = static_cast<int>(mtu);
    opts.bindAddr = static_cast<uint32_t>(bind);
    opts.port = static_cast<uint16_t>(port);
    opts.workers = static_cast<int>(workers);
    opts.socketBufferBytes = static_cast<int>(buf);
    std::string error;
    fwd_ = fl::Forwarder::start(opts, &error);
    if (!fwd_) {
      Napi::Error::New(env, error).ThrowAsJavaScriptException();
      return;
    }
    // Threads are joined and fds closed when Node tears the environment down, even if close()
    // was never called and the object was never collected.
    env_ = env;
    napi_add_env_cleanup_hook(env_, &UdpForwarder::StopAtExit, fwd_.get());
  }

  ~UdpForwarder() override {
    if (!fwd_) return;
    napi_remove_env_cleanup_hook(env_, &UdpForwarder::StopAtExit, fwd_.get());
    fwd_->stop();
  }

 private:
  static void StopAtExit(void* forwarder) { static_cast<fl::Forwarder*>(forwarder)->stop(); }

  bool alive(Napi::Env env) {
    if (fwd_ && !closed_) return true;
    Napi::Error::New(env, "UdpForwarder is closed").ThrowAsJavaScriptException();
    return false;
  }

  // setTable({ own: {ip, prefixLen} | null, icmpSource: number, routes: [{ip, prefixLen, peerIp, peerPort}] })
  Napi::Value SetTable(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!alive(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsObject()) {
      Napi::TypeError::New(env, "setTable(table): table must be an object").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object t = info[0].As<Napi::Object>();
    double ownIp = 0, ownLen = 0;
    bool haveOwn = false;
    Napi::Value own = t.Get("own");
    if (own.IsObject()) {
      Napi::Object oo = own.As<Napi::Object>();
      if (!readNumber(oo, "ip", 0, 4294967295.0, &ownIp, true) || !readNumber(oo, "prefixLen", 0, 32, &ownLen, true))
        return env.Undefined();
      haveOwn = true;
    } else if (!own.IsNull() && !own.IsUndefined()) {
      Napi::TypeError::New(env, "own must be an object or null").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double icmpSource = 0;
    if (!readNumber(t, "icmpSource", 0, 4294967295.0, &icmpSource, false)) return env.Undefined();
    Napi::Value rv = t.Get("routes");
    if (!rv.IsArray()) {
      Napi::TypeError::New(env, "routes must be an array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array arr = rv.As<Napi::Array>();
    std::vector<fl::Route> routes;
    routes.reserve(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value e = arr.Get(i);
      if (!e.IsObject()) {
        Napi::TypeError::New(env, "routes[" + std::to_string(i) + "] must be an object").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      Napi::Object r = e.As<Napi::Object>();
      double ip = 0, len = 0, peer = 0, port = 0;
      if (!readNumber(r, "ip", 0, 4294967295.0, &ip, true) || !readNumber(r, "prefixLen", 0, 32, &len, true) ||
          !readNumber(r, "peerIp", 0, 4294967295.0, &peer, true) || !readNumber(r, "peerPort", 1, 65535, &port, true))
        return env.Undefined();
      fl::Route route{};
      route.net = static_cast<uint32_t>(ip);
      route.prefixLen = static_cast<uint8_t>(len);
      route.peer.sin_family = AF_INET;
      route.peer.sin_addr.s_addr = htonl(static_cast<uint32_t>(peer));
      route.peer.sin_port = htons(static_cast<uint16_t>(port));
      routes.push_back(route);
    }
    fwd_->setTable(std::make_shared<fl::RouteTable>(std::move(routes), static_cast<uint32_t>(ownIp),
                                                    static_cast<uint8_t>(ownLen), haveOwn,
                                                    static_cast<uint32_t>(icmpSource)));
    return env.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    if (!fwd_) return out;
    std::vector<std::pair<const char*, uint64_t>> counters;
    fwd_->readCounters(&counters);
    for (const auto& [name, value] : counters) out.Set(name, Napi::Number::New(env, static_cast<double>(value)));
    return out;
  }

  Napi::Value Features(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!fwd_) return env.Undefined();
    const fl::Features& f = fwd_->features();
    Napi::Object out = Napi::Object::New(env);
    out.Set("workers", f.workers);
    out.Set("multiQueue", f.multiQueue);
    out.Set("vnetHdr", f.vnetHdr);
    out.Set("tso", f.tso);
    out.Set("udpGso", f.udpGso);
    out.Set("udpGro", f.udpGro);
    out.Set("tunCoalesce", f.tunCoalesce);
    out.Set("sndBuf", f.sndBuf);
    out.Set("rcvBuf", f.rcvBuf);
    return out;
  }

  // null while forwarding works; a message once the TUN failed.
  Napi::Value Failure(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int err = fwd_ ? fwd_->tunFailure() : 0;
    if (err == 0) return env.Null();
    return Napi::String::New(env, std::string("TUN device failed: ") + strerror(err));
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    closed_ = true;
    if (fwd_) fwd_->stop();  // joins the workers and closes the fds; counters stay readable
    return info.Env().Undefined();
  }

  std::unique_ptr<fl::Forwarder> fwd_;
  napi_env env_ = nullptr;
  bool closed_ = false;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("UdpForwarder", UdpForwarder::Define(env));
  exports.Set("version", Napi::String::New(env, "0.2.0"));
  // The counter names come from the one list in counters.h: TypeScript takes them from here.
  Napi::Array names = Napi::Array::New(env);
  uint32_t n = 0;
#define FL_NAME(name) names.Set(n++, Napi::String::New(env, #name));
  FL_COUNTERS(FL_NAME)
#undef FL_NAME
  names.Set(n++, Napi::String::New(env, "rxMaxDatagram"));
  exports.Set("counterNames", names);
  return exports;
}

}  // namespace

NODE_API_MODULE(flannel_native, Init)
