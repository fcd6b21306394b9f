// The Kubernetes manifests in deploy/kubernetes, read as the API server would get them, and a pod's
// containers run with podman the way a kubelet runs them: the same command and args, environment
// (env, envFrom, ConfigMap and Secret keys), volumes and capabilities. Host paths become directories of
// the caller's (one per test node), ConfigMap and Secret volumes directories of files. Anything in a
// container spec this translation does not know is an error, so the manifest cannot grow a field the
// tests silently skip.
import { readdirSync, readFileSync, writeFileSync, mkdirSync, chmodSync, closeSync, openSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { repoPath } from '../../testbed/repo.js';

export type KubeObject = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } };

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { configMapKeyRef?: { name: string; key: string }; secretKeyRef?: { name: string; key: string } };
}

export interface ContainerSpec {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  securityContext?: {
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
  };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; mountPropagation?: string }[];
  livenessProbe?: { httpGet: { path: string; port: number; host?: string } };
  readinessProbe?: { httpGet: { path: string; port: number; host?: string } };
  [field: string]: unknown;
}

export interface VolumeSpec {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string };
  secret?: { secretName: string; optional?: boolean; defaultMode?: number };
}

export interface PodSpec {
  hostNetwork?: boolean;
  initContainers: ContainerSpec[];
  containers: ContainerSpec[];
  volumes: VolumeSpec[];
}

/** Every object of every manifest file in deploy/kubernetes, in file order; YAML errors fail. */
export function loadManifests(dir = repoPath('deploy', 'kubernetes')): KubeObject[] {
  const out: KubeObject[] = [];
  for (const file of readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map(String).join('; ')}`);
      const value = doc.toJS() as KubeObject | null;
      if (value !== null) out.push(value);
    }
  }
  return out;
}

export function findObject(objects: readonly KubeObject[], kind: string, name?: string): KubeObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0]!;
}

export function configMapData(objects: readonly KubeObject[], name: string): Record<string, string> {
  return { ...((findObject(objects, 'ConfigMap', name)['data'] ?? {}) as Record<string, string>) };
}

export function podSpecOf(daemonSet: KubeObject): PodSpec {
  const spec = ((daemonSet['spec'] as Record<string, unknown>)['template'] as Record<string, unknown>)['spec'] as PodSpec;
  return { ...spec, initContainers: spec.initContainers ?? [], containers: spec.containers, volumes: spec.volumes ?? [] };
}

/** What the kubelet would have on one node: its ConfigMaps and Secrets, and where its host paths live. */
export interface NodeContext {
  /** ConfigMap name -> data (the test may have changed values, e.g. the etcd endpoints). */
  configMaps: Record<string, Record<string, string>>;
  /** Secret name -> file name -> content. A missing optional Secret mounts as an empty directory. */
  secrets: Record<string, Record<string, string>>;
  /** The directory standing for this node's `/` for hostPath volumes. */
  hostRoot: string;
  /** Host paths used as they are (devices: /dev/net/tun is the machine's own). */
  sharedHostPaths?: string[];
  /** Where ConfigMap and Secret volumes are written for this node. */
  volumeDir: string;
}

const CONTAINER_FIELDS = new Set(['name', 'image', 'command', 'args', 'env', 'envFrom', 'securityContext', 'volumeMounts',
  'livenessProbe', 'readinessProbe', 'resources']);
const SECURITY_FIELDS = new Set(['privileged', 'allowPrivilegeEscalation', 'capabilities']);

/** The container's environment as the kubelet builds it: envFrom first, then env (which wins). */
export function containerEnv(c: ContainerSpec, ctx: Pick<NodeContext, 'configMaps' | 'secrets'>): Record<string, string> {
  const env: Record<string, string> = {};
  const source = (kind: 'configMap' | 'secret', name: string): Record<string, string> => {
    const data = kind === 'configMap' ? ctx.configMaps[name] : ctx.secrets[name];
    if (!data) throw new Error(`container ${c.name}: ${kind} ${name} does not exist`);
    return data;
  };
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) Object.assign(env, source('configMap', from.configMapRef.name));
    else if (from.secretRef) Object.assign(env, source('secret', from.secretRef.name));
    else throw new Error(`container ${c.name}: envFrom ${JSON.stringify(from)} not understood`);
  }
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.configMapKeyRef) env[e.name] = source('configMap', e.valueFrom.configMapKeyRef.name)[e.valueFrom.configMapKeyRef.key] ?? '';
    else if (e.valueFrom?.secretKeyRef) env[e.name] = source('secret', e.valueFrom.secretKeyRef.name)[e.valueFrom.secretKeyRef.key] ?? '';
    else throw new Error(`container ${c.name}: env ${e.name} not understood`);
  }
  return env;
}

/** Makes a volume's source on this node and returns the path to bind-mount. */
function volumeSource(v: VolumeSpec, ctx: NodeContext): { path: string; readOnly: boolean } {
  if (v.hostPath) {
    if (ctx.sharedHostPaths?.includes(v.hostPath.path)) return { path: v.hostPath.path, readOnly: false };
    const path = join(ctx.hostRoot, v.hostPath.path);
    const type = v.hostPath.type ?? '';
    if (type === 'DirectoryOrCreate' || type === '' || type === 'Directory') mkdirSync(path, { recursive: true });
    else if (type === 'FileOrCreate') {
      mkdirSync(dirname(path), { recursive: true });
      closeSync(openSync(path, 'a'));
    } else throw new Error(`volume ${v.name}: hostPath type ${type} not understood`);
    return { path, readOnly: false };
  }
  const files = v.configMap ? ctx.configMaps[v.configMap.name] : v.secret ? ctx.secrets[v.secret.secretName] : undefined;
  if (v.configMap && !files) throw new Error(`volume ${v.name}: ConfigMap ${v.configMap.name} does not exist`);
  if (v.secret && !files && !v.secret.optional) throw new Error(`volume ${v.name}: Secret ${v.secret.secretName} does not exist`);
  if (!v.configMap && !v.secret) throw new Error(`volume ${v.name}: ${JSON.stringify(v)} not understood`);
  const path = join(ctx.volumeDir, v.name);
  mkdirSync(path, { recursive: true });
  for (const [key, value] of Object.entries(files ?? {})) {
    writeFileSync(join(path, key), value);
    chmodSync(join(path, key), v.secret?.defaultMode ?? 0o644);
  }
  // The kubelet mounts ConfigMap and Secret volumes read-only.
  return { path, readOnly: true };
}

/**
 * `podman run` arguments after `run` for one container of `pod` on a node: network namespace, security,
 * environment, mounts, entrypoint, image and args. `image` replaces the manifest's image name.
 */
export function podmanRunArgs(pod: PodSpec, c: ContainerSpec, ctx: NodeContext & { netns: string; image: string }): string[] {
  for (const field of Object.keys(c)) if (!CONTAINER_FIELDS.has(field)) throw new Error(`container ${c.name}: field ${field} not understood`);
  for (const field of Object.keys(c.securityContext ?? {})) if (!SECURITY_FIELDS.has(field)) throw new Error(`container ${c.name}: securityContext.${field} not understood`);
  if (!pod.hostNetwork) throw new Error('only hostNetwork pods run on the namespace cluster');
  const args = ['--network', `ns:/run/netns/${ctx.netns}`, '--pull=never'];
  const sc = c.securityContext ?? {};
  if (sc.privileged) args.push('--privileged');
  if (sc.allowPrivilegeEscalation === false) args.push('--security-opt=no-new-privileges');
  for (const cap of sc.capabilities?.drop ?? []) args.push(`--cap-drop=${cap.toLowerCase()}`);
  for (const cap of sc.capabilities?.add ?? []) args.push(`--cap-add=${cap}`);
  for (const [k, v] of Object.entries(containerEnv(c, ctx))) args.push('--env', `${k}=${v}`);
  for (const m of c.volumeMounts ?? []) {
    const v = pod.volumes.find((x) => x.name === m.name);
    if (!v) throw new Error(`container ${c.name}: volume ${m.name} is not declared`);
    const src = volumeSource(v, ctx);
    const target = m.mountPath.replace(/\/+$/, '');
    // HostToContainer: mounts made on the host later (the runtime's network namespaces) show inside.
    const options = [...(m.readOnly || src.readOnly ? ['ro'] : []), ...(m.mountPropagation === 'HostToContainer' ? ['rslave'] : [])];
    if (m.mountPropagation !== undefined && m.mountPropagation !== 'HostToContainer') throw new Error(`container ${c.name}: mountPropagation ${m.mountPropagation} not understood`);
    args.push('--volume', `${src.path}:${target}${options.length ? `:${options.join(',')}` : ''}`);
  }
  if (c.command) args.push('--entrypoint', JSON.stringify(c.command));
  args.push(ctx.image, ...(c.args ?? []));
  return args;
}
