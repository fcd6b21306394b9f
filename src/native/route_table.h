// The forwarding table: remote subnet -> the UDP address of the node holding it, plus this node's
// own subnet. A table is immutable once published; updates build a new one and swap it in
// (see Forwarder::setTable), so workers read it without any lock.
#pragma once

#include <netinet/in.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fl {

struct Route {
  uint32_t net;        // host order, host bits zero
  uint8_t prefixLen;   // 0..32
  sockaddr_in peer;    // PublicIP:port of the lease holder
};

inline uint32_t prefixMask(unsigned len) { return len == 0 ? 0 : ~0u << (32 - len); }

class RouteTable {
 public:
  RouteTable() = default;

  /**
   * Builds the lookup structures. `routes` may come in any order; duplicates keep the last.
   * `icmpSource` (host order, 0 = send none) is the source of our ICMP errors: it must not be a
   * local address, or the kernel drops the error as a martian when we write it to the TUN.
   */
  RouteTable(std::vector<Route> routes, uint32_t ownNet, uint8_t ownPrefixLen, bool haveOwn, uint32_t icmpSource)
      : own_net_(ownNet & prefixMask(ownPrefixLen)), own_mask_(prefixMask(ownPrefixLen)), have_own_(haveOwn),
        icmp_source_(icmpSource) {
    for (Route& r : routes) r.net &= prefixMask(r.prefixLen);
    // Stable sort by (prefix desc, net) so a binary search per distinct prefix length gives the
    // longest match; leases normally share one length, making this a single search.
    std::stable_sort(routes.begin(), routes.end(), [](const Route& a, const Route& b) {
      return a.prefixLen != b.prefixLen ? a.prefixLen > b.prefixLen : a.net < b.net;
    });
    for (const Route& r : routes) {
      if (!routes_.empty() && routes_.back().prefixLen == r.prefixLen && routes_.back().net == r.net) {
        routes_.back() = r;
        continue;
      }
      routes_.push_back(r);
    }
    for (size_t i = 0; i < routes_.size(); i++) {
      if (groups_.empty() || groups_.back().prefixLen != routes_[i].prefixLen) groups_.push_back({routes_[i].prefixLen, i, i});
      groups_.back().end = i + 1;
      members_.push_back(routes_[i].peer.sin_addr.s_addr);
    }
    std::sort(members_.begin(), members_.end());
    members_.erase(std::unique(members_.begin(), members_.end()), members_.end());
  }

  /** The peer for an inner destination (host order), or nullptr. */
  const sockaddr_in* lookup(uint32_t dst) const {
    for (const Group& g : groups_) {
      uint32_t key = dst & prefixMask(g.prefixLen);
      auto first = routes_.begin() + g.begin, last = routes_.begin() + g.end;
      auto it = std::lower_bound(first, last, key, [](const Route& r, uint32_t k) { return r.net < k; });
      if (it != last && it->net == key) return &it->peer;
    }
    return nullptr;
  }

  /** True when an outer source address (network order) is the PublicIP of some lease. */
  bool isMember(uint32_t addrNetOrder) const {
    return std::binary_search(members_.begin(), members_.end(), addrNetOrder);
  }

  /**
   * WireGuard's AllowedIPs rule: true when the inner source `src` (host order) lies in a subnet
   * whose lease has `fromNetOrder` as its PublicIP, i.e. the datagram's sender may speak for that
   * address. Our own subnet is never in the table, so a datagram claiming one of our own addresses
   * as its source fails too. The port is not compared: it is no part of a member's identity.
   */
  bool mayCarry(uint32_t fromNetOrder, uint32_t src) const {
    const sockaddr_in* owner = lookup(src);
    return owner != nullptr && owner->sin_addr.s_addr == fromNetOrder;
  }

  /** True when an inner destination (host order) lies in this node's own subnet. */
  bool isLocal(uint32_t dst) const { return have_own_ && (dst & own_mask_) == own_net_; }

  /** The address ICMP errors are sent from, host order; 0 = none. */
  uint32_t icmpSource() const { return icmp_source_; }

  size_t size() const { return routes_.size(); }

 private:
  struct Group {
    uint8_t prefixLen;
    size_t begin, end;
  };
  std::vector<Route> routes_;
  std::vector<Group> groups_;
  std::vector<uint32_t> members_;
  uint32_t own_net_ = 0, own_mask_ = 0;
  bool have_own_ = false;
  uint32_t icmp_source_ = 0;
};

}  // namespace fl
