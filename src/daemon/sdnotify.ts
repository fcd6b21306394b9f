// sd_notify: tells systemd (Type=notify units) that the daemon is ready, and what it is doing
// (STATUS=, shown by `systemctl status`), over the unix datagram socket named by $NOTIFY_SOCKET.
//
// Node cannot open AF_UNIX SOCK_DGRAM sockets, so a tiny addon (src/native/sdnotify.cc) sends the
// datagram from this process: systemd credits it to our PID, and no process is spawned per message.
// Where the addon is not built, systemd's own `systemd-notify --pid=<our pid>` sends it instead: run
// as root (flanneld always is), it puts our PID in the message's SCM_CREDENTIALS, so systemd
// attributes the message to this process even after the short-lived helper has exited, and it waits
// (BARRIER=1, systemd 246+) until systemd has processed the message.
import { runProcess } from '../common/child-process.js';
import { loadBuiltAddon } from '../common/addon.js';

export interface NotifyOptions {
  /** Path of the systemd-notify binary; default from PATH. Setting it forces the fallback. */
  command?: string;
  timeoutMs?: number;
}

interface NotifyAddon {
  send(socketPath: string, message: string): number;
}

let addon: NotifyAddon | null | undefined;

/** The native sender, or null when it is not built (then systemd-notify is used). */
function nativeSender(): NotifyAddon | null {
  if (addon === undefined) {
    try {
      addon = loadBuiltAddon<NotifyAddon>('flannel_sdnotify');
    } catch {
      addon = null;
    }
  }
  return addon;
}

/**
 * Sends `state` (e.g. "READY=1", or several "KEY=VALUE" lines) to systemd. Resolves false when not
 * running under systemd (no NOTIFY_SOCKET) or when the message could not be sent; never rejects.
 */
export async function notifySystemd(state: string, opts: NotifyOptions = {}): Promise<boolean> {
  const socket = process.env['NOTIFY_SOCKET'];
  if (!socket) return false;
  const assignments = state.split('\n').filter((line) => line.trim() !== '');
  if (assignments.length === 0 || assignments.some((a) => !/^[A-Z_][A-Z0-9_]*=/.test(a))) return false;
  const sender = opts.command === undefined ? nativeSender() : null;
  if (sender) return sender.send(socket, assignments.join('\n') + '\n') === 0;
  const result = await runProcess([opts.command ?? 'systemd-notify', `--pid=${process.pid}`, ...assignments], { timeoutMs: opts.timeoutMs ?? 5_000 }).catch(() => null);
  return result !== null && result.code === 0 && !result.timedOut;
}

/**
 * What the daemon is doing, for `systemctl status` (STATUS=). Repeats of the same text are not sent
 * again, so a wait loop can call it on every turn.
 */
export class SystemdStatus {
  private last = '';

  constructor(private readonly send: (state: string) => Promise<boolean> = notifySystemd) {}

  set(status: string): void {
    const line = status.replace(/\n/g, ' ');
    if (line === this.last) return;
    this.last = line;
    void this.send(`STATUS=${line}`);
  }
}
