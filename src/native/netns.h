// The one way our addons enter a network namespace: a short-lived helper thread joins it, does the
// work that must happen there (creating a socket or a device — both stay in the namespace they were
// made in), and ends. The calling thread, Node's JS thread, never changes its namespace, so nothing
// has to be restored and nothing can fail half-way back: no abort().
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <functional>
#include <string>

namespace fl {

/**
 * Runs `work` inside the network namespace at `path` (e.g. /run/netns/NAME) on a helper thread, and
 * waits for it. An empty path runs `work` here, in ours. Returns what `work` returns; false with
 * `*error` set when the namespace cannot be entered.
 */
inline bool runInNetns(const std::string& path, const std::function<bool(std::string*)>& work, std::string* error) {
  if (path.empty()) return work(error);
  struct Job {
    const std::string* path;
    const std::function<bool(std::string*)>* work;
    std::string* error;
    bool ok;
  };
  Job job{&path, &work, error, false};
  auto body = [](void* arg) -> void* {
    auto* j = static_cast<Job*>(arg);
    int ns = ::open(j->path->c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0) {
      *j->error = "open network namespace " + *j->path + ": " + strerror(errno);
      return nullptr;
    }
    int rc = setns(ns, CLONE_NEWNET);
    int saved = errno;
    ::close(ns);
    if (rc < 0) {
      *j->error = "enter network namespace " + *j->path + ": " + strerror(saved);
      return nullptr;
    }
    j->ok = (*j->work)(j->error);
    return nullptr;  // the thread ends here, and its namespace with it
  };
  // The helper must not take signals meant for Node's main thread.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int rc = pthread_create(&t, nullptr, body, &job);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    *error = std::string("cannot start a thread to enter the network namespace: ") + strerror(rc);
    return false;
  }
  pthread_join(t, nullptr);
  return job.ok;
}

}  // namespace fl
