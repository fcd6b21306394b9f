#include "devices.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

namespace fl {

namespace {

std::string sysError(const std::string& what) { return what + ": " + strerror(errno); }

/** ifreq-based ioctl on a throwaway socket of the current network namespace. */
bool ifIoctl(unsigned long req, struct ifreq* ifr) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  int rc = ioctl(s, req, ifr);
  int saved = errno;
  close(s);
  errno = saved;
  return rc == 0;
}

int openTunQueue(const std::string& name, short flags, std::string* error) {
  int fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *error = sysError("open /dev/net/tun");
    return -1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = flags;
  strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    *error = sysError("TUNSETIFF " + name);
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

void closeAll(std::vector<int>* fds) {
  for (int fd : *fds)
    if (fd >= 0) close(fd);
  fds->clear();
}

bool openTun(const TunRequest& req, TunResult* out, std::string* error) {
  if (req.name.empty() || req.name.size() >= IFNAMSIZ) {
    *error = "invalid TUN device name \"" + req.name + "\"";
    return false;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, req.name.c_str(), IFNAMSIZ - 1);
  if (ifIoctl(SIOCGIFINDEX, &ifr)) {
    *error = "network device " + req.name + " already exists (is another flanneld running?)";
    return false;
  }

  out->vnetHdr = req.vnetHdr;
  out->multiQueue = req.queues > 1;
  short flags = IFF_TUN | IFF_NO_PI;
  if (out->vnetHdr) flags |= IFF_VNET_HDR;
  if (out->multiQueue) flags |= IFF_MULTI_QUEUE;
  int first = openTunQueue(req.name, flags, error);
  if (first < 0 && out->vnetHdr) {  // very old kernels: retry plain
    out->vnetHdr = false;
    flags &= ~IFF_VNET_HDR;
    first = openTunQueue(req.name, flags, error);
  }
  if (first < 0 && out->multiQueue) {
    out->multiQueue = false;
    flags &= ~IFF_MULTI_QUEUE;
    first = openTunQueue(req.name, flags, error);
  }
  if (first < 0) return false;
  out->fds.push_back(first);
  for (int q = 1; out->multiQueue && q < req.queues; q++) {
    int fd = openTunQueue(req.name, flags, error);
    if (fd < 0) {
      closeAll(&out->fds);
      return false;
    }
    out->fds.push_back(fd);
  }

  if (out->vnetHdr) {
    int hdrSize = 10;  // struct virtio_net_hdr, no mergeable-buffer field
    if (ioctl(first, TUNSETVNETHDRSZ, &hdrSize) < 0) {
      *error = sysError("TUNSETVNETHDRSZ");
      closeAll(&out->fds);
      return false;
    }
    // TSO for IPv4 only: the overlay is IPv4, and we split only what we understand.
    out->tso = req.tso && ioctl(first, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) == 0;
    if (!out->tso) ioctl(first, TUNSETOFFLOAD, 0ul);
  }

  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, req.name.c_str(), IFNAMSIZ - 1);
  ifr.ifr_mtu = req.mtu;
  if (!ifIoctl(SIOCSIFMTU, &ifr)) {
    *error = sysError("set MTU " + std::to_string(req.mtu) + " on " + req.name);
    closeAll(&out->fds);
    return false;
  }
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, req.name.c_str(), IFNAMSIZ - 1);
  if (!ifIoctl(SIOCGIFFLAGS, &ifr)) {
    *error = sysError("get flags of " + req.name);
    closeAll(&out->fds);
    return false;
  }
  ifr.ifr_flags |= IFF_UP;
  if (!ifIoctl(SIOCSIFFLAGS, &ifr)) {
    *error = sysError("bring " + req.name + " up");
    closeAll(&out->fds);
    return false;
  }
  return true;
}

bool openUdp(const UdpRequest& req, UdpResult* out, std::string* error) {
  sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons(req.port);
  addr.sin_addr.s_addr = htonl(req.bindAddr);
  char text[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text));
  std::string where = std::string(text) + ":" + std::to_string(req.port);

  // A reuseport group would silently share the port with any other reuseport socket there, so
  // first make sure nobody holds it, with a plain bind.
  {
    int probe = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (probe < 0) {
      *error = sysError("socket");
      return false;
    }
    if (bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
      *error = sysError("bind UDP " + where);
      close(probe);
      return false;
    }
    if (req.sockets == 1) {
      out->fds.push_back(probe);
    } else {
      close(probe);
    }
  }
  while (static_cast<int>(out->fds.size()) < req.sockets) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
      *error = sysError("bind UDP " + where + " (SO_REUSEPORT)");
      if (fd >= 0) close(fd);
      closeAll(&out->fds);
      return false;
    }
    out->fds.push_back(fd);
  }

  out->gro = req.gro;
  for (int fd : out->fds) {
    int size = req.bufferBytes;
    // The FORCE variants pass rmem_max/wmem_max (CAP_NET_ADMIN); fall back to the capped ones.
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    // Sends block when the socket buffer is full (back-pressure), but never for long, so a stop
    // request is seen promptly.
    timeval tv{0, 100 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (out->gro) {
      int on = 1;
      if (setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on)) < 0) out->gro = false;
    }
  }
  if (!out->gro)
    for (int fd : out->fds) {
      int off = 0;
      setsockopt(fd, SOL_UDP, UDP_GRO, &off, sizeof(off));
    }
  socklen_t len = sizeof(int);
  getsockopt(out->fds[0], SOL_SOCKET, SO_SNDBUF, &out->sndBuf, &len);
  len = sizeof(int);
  getsockopt(out->fds[0], SOL_SOCKET, SO_RCVBUF, &out->rcvBuf, &len);
  return true;
}

bool udpGsoSupported(int fd) {
  int size = 1400;  // any value: we only ask whether the option exists; sends set it per message
  if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, sizeof(size)) < 0) return false;
  size = 0;
  setsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, sizeof(size));
  return true;
}

}  // namespace fl
