// Opening the TUN device and the UDP socket(s) the forwarder uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fl {

struct TunRequest {
  std::string name;
  int queues = 1;
  int mtu = 1472;
  bool vnetHdr = true;
  bool tso = true;
};

struct TunResult {
  std::vector<int> fds;
  bool multiQueue = false, vnetHdr = false, tso = false;
};

/**
 * Creates the TUN device (IFF_TUN | IFF_NO_PI, multi-queue when queues > 1), sets its MTU and
 * brings it up. Refuses a name that already exists: attaching to a live device would steal queues
 * from whoever owns it. Falls back to a single queue / no offloads if the kernel refuses them.
 */
bool openTun(const TunRequest& req, TunResult* out, std::string* error);

struct UdpRequest {
  uint32_t bindAddr = 0;  // host order
  uint16_t port = 8285;
  int sockets = 1;        // > 1: an SO_REUSEPORT group, one per worker
  int bufferBytes = 4 << 20;
  bool gro = true;
};

struct UdpResult {
  std::vector<int> fds;
  bool gro = false;
  int sndBuf = 0, rcvBuf = 0;
};

bool openUdp(const UdpRequest& req, UdpResult* out, std::string* error);

/** Whether this kernel accepts UDP_SEGMENT on a socket (checked once per socket). */
bool udpGsoSupported(int fd);

void closeAll(std::vector<int>* fds);

}  // namespace fl
