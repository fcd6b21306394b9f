// malloc_trim(3) for the daemon: glibc keeps the pages of freed allocations (gRPC and HTTP/2
// buffers, JSON and netlink scratch, per-thread arenas) mapped for reuse, so a daemon that is idle
// after a busy start holds megabytes it no longer uses. Trimming hands them back to the kernel.
// Its own addon: nothing else to share, and the daemon may load it where the others are not built.
#include <napi.h>

#include <malloc.h>

namespace {

// trim() -> true when memory was released to the kernel.
Napi::Value Trim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("trim", Napi::Function::New(env, Trim));
  return exports;
}

}  // namespace

NODE_API_MODULE(flannel_memory, Init)
