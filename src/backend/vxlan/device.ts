// The flannel.<VNI> device: created with upstream flannel's attributes, kept (with its MAC, which
// peers have in their FDB) when it already matches, deleted and recreated when it does not.
import type { Logger } from '../../common/log.js';
import { ip, type IpOptions } from '../../routes/ip.js';
import { linkDeleteCommand, linkSetCommand, readLink, vxlanAddCommand, vxlanMismatches, type LinkInfo, type VxlanSpec } from '../../routes/link.js';

export async function ensureVxlanDevice(spec: VxlanSpec, log: Logger, opts: IpOptions): Promise<LinkInfo> {
  let link = await readLink(spec.name, opts);
  if (link) {
    const reasons = vxlanMismatches(link, spec);
    if (reasons.length > 0) {
      log.warn({ device: spec.name, reasons }, 'vxlan device exists with incompatible attributes; recreating it');
      await ip(linkDeleteCommand(spec.name), opts);
      link = null;
    } else {
      log.debug({ device: spec.name, mac: link.address }, 'reusing existing vxlan device');
    }
  }
  if (!link) {
    await ip(vxlanAddCommand(spec), opts);
    log.info({ device: spec.name, vni: spec.vni, local: spec.local, dev: spec.dev, port: spec.port, gbp: spec.gbp }, 'created vxlan device');
  } else if (spec.mtu !== undefined && link.mtu !== spec.mtu) {
    await ip(linkSetCommand(spec.name, { mtu: spec.mtu }), opts);
  }
  const created = await readLink(spec.name, opts);
  if (!created?.vxlan) throw new Error(`vxlan device ${spec.name} is missing right after it was created`);
  return created;
}
