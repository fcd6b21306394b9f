// sd_notify(3) without libsystemd: one datagram on the unix socket named by $NOTIFY_SOCKET, sent from
// the daemon's own process (so systemd credits it to the main PID) instead of a systemd-notify child
// per message. Separate from the data-path addon: it has no threads and nothing else to share.
#include <napi.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

namespace {

// send(socketPath, message) -> 0, or -errno. A leading '@' names an abstract socket, as systemd does.
Napi::Value Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "send(socketPath: string, message: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (path.size() < 2 || path.size() >= sizeof(addr.sun_path) || (path[0] != '/' && path[0] != '@')) {
    return Napi::Number::New(env, -EINVAL);
  }
  memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  ssize_t sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<struct sockaddr*>(&addr), len);
  int err = sent < 0 ? errno : (static_cast<size_t>(sent) == message.size() ? 0 : EMSGSIZE);
  close(fd);
  return Napi::Number::New(env, -err);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("send", Napi::Function::New(env, Send));
  return exports;
}

}  // namespace

NODE_API_MODULE(flannel_sdnotify, Init)
