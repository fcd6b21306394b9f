// The flannel plugin's own network configuration (what the runtime passes on stdin), checked
// field by field so that a mistake is reported by name rather than surfacing later in a delegate.
import { DEFAULT_SUBNET_FILE } from '../subnet/envfile.js';
import { CNI_ERR, CniError } from './errors.js';

export type JsonObject = Record<string, unknown>;

export const DEFAULT_DATA_DIR = '/var/lib/cni/flannel';

export interface FlannelNetConf {
  /** The whole object as received, for fields we pass through (prevResult, args, ...). */
  raw: JsonObject;
  cniVersion: string;
  name: string;
  type: string;
  subnetFile: string;
  dataDir: string;
  /** Options for the delegate plugin; never has `name` or `ipam` (flannel sets those). */
  delegate: JsonObject | null;
  /** Base for the delegate's IPAM section (e.g. a dataDir for host-local, extra routes). */
  ipam: JsonObject | null;
  runtimeConfig: JsonObject | null;
}

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function invalid(msg: string): CniError {
  return new CniError(CNI_ERR.invalidNetworkConfig, msg);
}

function optionalString(raw: JsonObject, key: string, fallback: string): string {
  const v = raw[key];
  if (v === undefined || v === null || v === '') return fallback;
  if (typeof v !== 'string') throw invalid(`"${key}" must be a string`);
  return v;
}

function optionalObject(raw: JsonObject, key: string): JsonObject | null {
  const v = raw[key];
  if (v === undefined || v === null) return null;
  if (!isObject(v)) throw invalid(`"${key}" must be an object`);
  return v;
}

/** Parses stdin. Throws CniError 6 for bad JSON and 7 for a wrong field. */
export function parseFlannelNetConf(stdin: string): FlannelNetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(CNI_ERR.decodingFailure, `failed to load netconf: ${(err as Error).message}`);
  }
  if (!isObject(raw)) throw new CniError(CNI_ERR.decodingFailure, 'failed to load netconf: not a JSON object');

  const name = raw['name'];
  if (typeof name !== 'string' || name === '') throw invalid('"name" (the network name) is required');
  // host-local keeps its allocations in a directory named after the network.
  if (name.includes('/') || name === '.' || name === '..') throw invalid(`"name" "${name}" must not contain "/"`);

  const delegate = optionalObject(raw, 'delegate');
  if (delegate) {
    if ('type' in delegate && typeof delegate['type'] !== 'string') {
      throw invalid("'delegate' dictionary, if present, must have (string) 'type' field");
    }
    if ('name' in delegate) throw invalid("'delegate' dictionary must not have 'name' field, it'll be set by flannel");
    if ('ipam' in delegate) throw invalid("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel");
  }

  const ipam = optionalObject(raw, 'ipam');
  if (ipam && 'routes' in ipam) {
    const routes = ipam['routes'];
    if (!Array.isArray(routes) || routes.some((r) => !isObject(r) || typeof r['dst'] !== 'string')) {
      throw invalid('failed to read IPAM routes: "ipam.routes" must be a list of {"dst": "a.b.c.d/len"[, "gw": ...]}');
    }
  }

  return {
    raw,
    cniVersion: optionalString(raw, 'cniVersion', ''),
    name,
    type: optionalString(raw, 'type', 'flannel'),
    subnetFile: optionalString(raw, 'subnetFile', DEFAULT_SUBNET_FILE),
    dataDir: optionalString(raw, 'dataDir', DEFAULT_DATA_DIR),
    delegate,
    ipam,
    runtimeConfig: optionalObject(raw, 'runtimeConfig'),
  };
}
