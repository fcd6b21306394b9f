// Picks the backend named by the network config.
import type { Backend, BackendContext } from './backend.js';
import { HostGwBackend } from './hostgw/hostgw-backend.js';
import { UdpBackend } from './udp/udp-backend.js';
import { VxlanBackend } from './vxlan/vxlan-backend.js';
import { WireguardBackend } from './wireguard/wireguard-backend.js';

export function createBackend(ctx: BackendContext): Backend {
  const cfg = ctx.network.backend;
  switch (cfg.type) {
    case 'vxlan':
      return new VxlanBackend(ctx, cfg);
    case 'udp':
      return new UdpBackend(ctx, cfg);
    case 'host-gw':
      return new HostGwBackend(ctx, cfg);
    case 'wireguard':
      return new WireguardBackend(ctx, cfg);
  }
}
