// Measures what rtnetlink from inside the daemon would cost, against the `ip -batch` path we run:
// programs N peers' FDB, neighbour and route entries on flannel.1 in a namespace with batched
// netlink messages (one ACK each, many messages per sendmsg), then dumps the three tables back.
// Not part of the product; used for the "ip -batch or rtnetlink?" figures in docs/vxlan.md.
//   cc -O2 -o /tmp/netlink-probe bench/netlink-probe.c && /tmp/netlink-probe <netns> <N>
// The namespace must hold an up vxlan device flannel.1 (bench/netlink-probe.sh sets one up).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void add_attr(struct nlmsghdr *n, unsigned short type, const void *data, unsigned short len) {
  struct rtattr *rta = (struct rtattr *)((char *)n + NLMSG_ALIGN(n->nlmsg_len));
  rta->rta_type = type;
  rta->rta_len = RTA_LENGTH(len);
  memcpy(RTA_DATA(rta), data, len);
  n->nlmsg_len = NLMSG_ALIGN(n->nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

static unsigned seq = 1;

/** Builds one message of the given kind for peer i into buf; returns its length. */
static int build(char *buf, int kind, int i, int ifindex) {
  memset(buf, 0, 256);
  struct nlmsghdr *n = (struct nlmsghdr *)buf;
  unsigned a = (64 + i) * 8;
  uint32_t subnet = htonl((198u << 24) | (19u << 16) | a);
  unsigned char mac[6] = {0x02, 0x00, 0x00, (unsigned char)(i >> 16), (unsigned char)(i >> 8), (unsigned char)i};
  n->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
  n->nlmsg_seq = seq++;
  if (kind == 2) { // route: <subnet>/29 via <subnet> dev flannel.1 onlink
    n->nlmsg_type = RTM_NEWROUTE;
    n->nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    struct rtmsg *r = NLMSG_DATA(n);
    r->rtm_family = AF_INET;
    r->rtm_dst_len = 29;
    r->rtm_table = RT_TABLE_MAIN;
    r->rtm_protocol = RTPROT_BOOT;
    r->rtm_scope = RT_SCOPE_UNIVERSE;
    r->rtm_type = RTN_UNICAST;
    r->rtm_flags = RTNH_F_ONLINK;
    add_attr(n, RTA_DST, &subnet, 4);
    add_attr(n, RTA_GATEWAY, &subnet, 4);
    add_attr(n, RTA_OIF, &ifindex, 4);
  } else { // neighbour (AF_INET) or FDB (AF_BRIDGE, self)
    n->nlmsg_type = RTM_NEWNEIGH;
    n->nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
    struct ndmsg *nd = NLMSG_DATA(n);
    nd->ndm_family = kind == 0 ? AF_BRIDGE : AF_INET;
    nd->ndm_ifindex = ifindex;
    nd->ndm_state = NUD_PERMANENT;
    if (kind == 0) {
      nd->ndm_flags = NTF_SELF;
      uint32_t dst = htonl((198u << 24) | (18u << 16) | (10 + i % 240));
      add_attr(n, NDA_LLADDR, mac, 6);
      add_attr(n, NDA_DST, &dst, 4);
    } else {
      add_attr(n, NDA_DST, &subnet, 4);
      add_attr(n, NDA_LLADDR, mac, 6);
    }
  }
  return NLMSG_ALIGN(n->nlmsg_len);
}

/** Sends count messages of one kind, `window` per sendmsg, reading each window's ACKs; returns errors. */
static int program(int fd, int kind, int count, int ifindex, int window) {
  static char out[1 << 20], in[1 << 20];
  int errors = 0;
  for (int first = 0; first < count; first += window) {
    int len = 0, sent = 0;
    for (int i = first; i < count && i < first + window; i++, sent++) len += build(out + len, kind, i, ifindex);
    if (send(fd, out, len, 0) != len) { perror("send"); exit(1); }
    for (int acked = 0; acked < sent;) {
      int r = recv(fd, in, sizeof in, 0);
      if (r < 0) { perror("recv"); exit(1); }
      for (struct nlmsghdr *h = (struct nlmsghdr *)in; NLMSG_OK(h, (unsigned)r); h = NLMSG_NEXT(h, r)) {
        if (h->nlmsg_type == NLMSG_ERROR) {
          acked++;
          if (((struct nlmsgerr *)NLMSG_DATA(h))->error != 0) errors++;
        }
      }
    }
  }
  return errors;
}

/** Dumps one table; returns the number of entries. */
static int dump(int fd, int type, int family) {
  static char in[1 << 20];
  struct { struct nlmsghdr n; struct ndmsg m; } req;
  memset(&req, 0, sizeof req);
  req.n.nlmsg_len = NLMSG_LENGTH(type == RTM_GETROUTE ? sizeof(struct rtmsg) : sizeof(struct ndmsg));
  req.n.nlmsg_type = type;
  req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.n.nlmsg_seq = seq++;
  req.m.ndm_family = family;
  send(fd, &req, req.n.nlmsg_len, 0);
  int entries = 0;
  for (;;) {
    int r = recv(fd, in, sizeof in, 0);
    if (r <= 0) return entries;
    for (struct nlmsghdr *h = (struct nlmsghdr *)in; NLMSG_OK(h, (unsigned)r); h = NLMSG_NEXT(h, r)) {
      if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) return entries;
      entries++;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: %s <netns> <N>\n", argv[0]); return 2; }
  char path[256];
  snprintf(path, sizeof path, "/run/netns/%s", argv[1]);
  int ns = open(path, O_RDONLY);
  if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) { perror(path); return 1; }
  int n = atoi(argv[2]);
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int buf = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  bind(fd, (struct sockaddr *)&sa, sizeof sa);
  int ifindex = if_nametoindex("flannel.1");
  if (!ifindex) { perror("flannel.1"); return 1; }
  const char *names[] = {"fdb", "neigh", "route"};
  double total = 0;
  for (int kind = 0; kind < 3; kind++) {
    double t0 = now_ms();
    int errors = program(fd, kind, n, ifindex, 256);
    double t = now_ms() - t0;
    total += t;
    printf("%s: %d entries in %.1f ms, %d refused\n", names[kind], n, t, errors);
  }
  printf("all %d entries: %.1f ms\n", 3 * n, total);
  double t0 = now_ms();
  int routes = dump(fd, RTM_GETROUTE, AF_INET);
  int neighs = dump(fd, RTM_GETNEIGH, AF_INET);
  int fdb = dump(fd, RTM_GETNEIGH, AF_BRIDGE);
  printf("dumps: %d routes, %d neighbours, %d fdb in %.1f ms\n", routes, neighs, fdb, now_ms() - t0);
  return 0;
}
