// The flannel CNI plugin's executable where it is compiled (build/Release/flannel_cni): a client of
// the running flanneld, which serves the plugin on a Unix socket (src/daemon/cni-server.ts; the
// protocol is in src/cni/protocol.ts and docs/cni.md). It sends the CNI_* variables, PATH and stdin,
// and passes the plugin's stdout, stderr and exit status through unchanged. When flanneld cannot
// serve (not running, no socket, another namespace, host paths it does not see), it runs the
// standalone plugin instead, with the same stdin: <tree>/bin/flannel --standalone, Node on
// dist/cni/main.js. Only when that cannot start either does it answer with an error naming both.
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define PROTOCOL "flannel-cni/1"
#define DEFAULT_SOCKET "/run/flannel/cni.sock" // DEFAULT_CNI_SOCKET in src/cni/protocol.ts
#define REQUEST_MAX (256 * 1024)                // REQUEST_MAX_BYTES in src/cni/protocol.ts
#define ANSWER_MAX (64 * 1024 * 1024)

extern char **environ;
static char why[2048]; // why flanneld did not serve the request

struct buf { char *p; size_t n, cap; };

static void put(struct buf *b, const void *data, size_t n) {
  if (b->n + n + 1 > b->cap) {
    b->cap = 2 * (b->n + n) + 4096;
    if (!(b->p = realloc(b->p, b->cap))) abort();
  }
  memcpy(b->p + b->n, data, n);
  b->n += n;
}
static void put0(struct buf *b, const char *s) { put(b, s, strlen(s) + 1); }
static void put_text(struct buf *b, const char *s) { put(b, s, strlen(s)); }

// "<st_dev>:<st_ino>" of a path, links followed; "" when it cannot be read.
static void put_id(struct buf *b, const char *path) {
  struct stat st;
  char id[48] = "";
  if (stat(path, &st) == 0) snprintf(id, sizeof id, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
  put0(b, id);
}

// mode: 'r' read, 'w' write, 's' send (no SIGPIPE when flanneld has gone). 0 when all n bytes moved.
static int move(int fd, void *p, size_t n, char mode) {
  for (size_t done = 0; done < n;) {
    ssize_t k = mode == 'r' ? read(fd, (char *)p + done, n - done)
              : mode == 's' ? send(fd, (char *)p + done, n - done, MSG_NOSIGNAL)
                            : write(fd, (char *)p + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    done += (size_t)k;
  }
  return 0;
}

static int send_frame(int fd, char type, const struct buf *b) {
  unsigned char h[5] = {(unsigned char)type, b->n >> 24, b->n >> 16, b->n >> 8, b->n};
  return move(fd, h, 5, 's') || move(fd, b->p, b->n, 's') ? -1 : 0;
}

// One frame's payload, NUL-terminated after its n bytes; NULL when none could be read.
static char *read_frame(int fd, char *type, uint32_t *n) {
  unsigned char h[5];
  if (move(fd, h, 5, 'r')) return NULL;
  *type = (char)h[0];
  *n = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
  char *p = *n <= ANSWER_MAX ? malloc(*n + 1) : NULL;
  if (!p || move(fd, p, *n, 'r')) return free(p), NULL;
  p[*n] = 0;
  return p;
}

// The exit status when flanneld served the request; -1, with why, when it did not.
static int via_daemon(const char *path, const struct buf *in) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  struct stat st;
  struct buf q = {0};
  put0(&q, PROTOCOL);
  put_id(&q, "/proc/self/ns/net");
  put_id(&q, "/proc/self/ns/mnt");
  for (char **e = environ; *e; e++)
    if (!strncmp(*e, "CNI_", 4) || !strncmp(*e, "PATH=", 5)) put0(&q, *e);
  put(&q, "", 1);
  put(&q, in->p ? in->p : "", in->n);
  if (q.n > REQUEST_MAX) return snprintf(why, sizeof why, "the request (%zu bytes) is larger than flanneld takes", q.n), -1;
  if (stat(path, &st) != 0) return snprintf(why, sizeof why, "no socket at %s (%s)", path, strerror(errno)), -1;
  if (!S_ISSOCK(st.st_mode) || (st.st_uid != 0 && st.st_uid != geteuid()))
    return snprintf(why, sizeof why, "%s is not a socket owned by root", path), -1;
  if (strlen(path) >= sizeof sa.sun_path) return snprintf(why, sizeof why, "socket path %s is too long", path), -1;
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  // Sending never waits long; the answer comes once the delegate has finished (flanneld gives it 300 s).
  struct timeval send_limit = {5, 0}, answer_limit = {330, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_limit, sizeof send_limit);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &answer_limit, sizeof answer_limit);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    snprintf(why, sizeof why, "cannot connect to %s: %s", path, strerror(errno));
    return close(fd), -1;
  }
  int status = -1;
  if (send_frame(fd, 'Q', &q)) snprintf(why, sizeof why, "cannot send the request to %s: %s", path, strerror(errno));
  else for (;;) {
    char type;
    uint32_t n;
    errno = 0;
    char *p = read_frame(fd, &type, &n);
    if (!p) {
      snprintf(why, sizeof why, "flanneld (%s) gave no answer: %s", path, errno ? strerror(errno) : "connection closed");
      break;
    }
    if (type == 'P') { // the identities of the host paths flanneld asks about, in order
      struct buf ids = {0};
      for (char *s = p; s < p + n; s += strlen(s) + 1) put_id(&ids, s);
      int failed = send_frame(fd, 'I', &ids);
      free(ids.p);
      free(p);
      if (!failed) continue;
      snprintf(why, sizeof why, "cannot answer flanneld (%s): %s", path, strerror(errno));
      break;
    }
    uint32_t out = n >= 5 ? (uint32_t)(unsigned char)p[1] << 24 | (uint32_t)(unsigned char)p[2] << 16 | (uint32_t)(unsigned char)p[3] << 8 | (unsigned char)p[4] : 0;
    if (type == 'R' && n >= 5 && out <= n - 5) {
      move(1, p + 5, out, 'w');
      move(2, p + 5 + out, n - 5 - out, 'w');
      status = (unsigned char)p[0];
    } else if (type == 'U') snprintf(why, sizeof why, "%s", p);
    else snprintf(why, sizeof why, "flanneld (%s) answered with an unknown frame", path);
    free(p);
    break;
  }
  free(q.p);
  close(fd);
  return status;
}

// s as the inside of a JSON string.
static void put_json(struct buf *b, const char *s) {
  for (; *s; s++) {
    char esc[8];
    if (*s == '"' || *s == '\\') put(b, (char[]){'\\', *s}, 2);
    else if ((unsigned char)*s < 0x20) put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", *s));
    else put(b, s, 1);
  }
}

int main(void) {
  struct buf in = {0}, msg = {0};
  char chunk[65536], self[PATH_MAX] = "", script[PATH_MAX + 16];
  for (ssize_t k; (k = read(0, chunk, sizeof chunk)) != 0;) {
    if (k > 0) put(&in, chunk, (size_t)k);
    else if (errno != EINTR) break; // no stdin at all (VERSION may come so)
  }
  const char *socket_path = getenv("FLANNEL_CNI_SOCKET");
  int status = via_daemon(socket_path && *socket_path ? socket_path : DEFAULT_SOCKET, &in);
  if (status >= 0) return status;

  // The standalone plugin of the tree this file belongs to (<tree>/build/Release/flannel_cni), with
  // the stdin read above from a memory file, and why flanneld did not serve, for its errors.
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  self[len > 0 ? len : 0] = 0;
  char *name = strrchr(self, '/');
  const char *failure = "the client is not in a tree's build/Release (link it there, do not copy it)";
  if (name && name - self >= 14 && !strncmp(name - 14, "/build/Release", 14)) {
    name[-14] = 0;
    snprintf(script, sizeof script, "%s/bin/flannel", self);
    put_json(&msg, why);
    put(&msg, "", 1);
    setenv("FLANNEL_CNI_DAEMON_ERROR", msg.p, 1);
    int stdin_copy = memfd_create("flannel-cni-stdin", 0);
    if (stdin_copy >= 0 && !move(stdin_copy, in.p, in.n, 'w') && lseek(stdin_copy, 0, SEEK_SET) == 0 && dup2(stdin_copy, 0) == 0)
      execl(script, script, "--standalone", (char *)NULL);
    failure = strerror(errno);
  } else snprintf(script, sizeof script, "%s", self);
  struct buf out = {0};
  put_text(&out, "{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"flannel CNI plugin: flanneld could not serve the request (");
  put_json(&out, why);
  put_text(&out, "), and the standalone plugin could not be started: ");
  put_json(&out, script);
  put_text(&out, ": ");
  put_json(&out, failure);
  put_text(&out, "\"}\n");
  move(1, out.p, out.n, 'w');
  return 1;
}
