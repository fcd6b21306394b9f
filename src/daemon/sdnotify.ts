// sd_notify: tells systemd (Type=notify units) that the daemon is ready, over the unix datagram socket
// named by $NOTIFY_SOCKET.
//
// Node cannot open AF_UNIX SOCK_DGRAM sockets, so the datagram is sent by systemd's own
// `systemd-notify`, with --pid set to our PID. Run as root (flanneld always is), systemd-notify then
// puts our PID in the message's SCM_CREDENTIALS, so systemd attributes the message to this process even
// after the short-lived helper has exited (without it, systemd may find the sender gone and drop the
// message — the well-known systemd-notify race). That works for NotifyAccess=main as well as =all; our
// unit uses NotifyAccess=all so that a launcher script in front of node does not matter. It also
// sends MAINPID=<our pid>, which is what systemd should track anyway. systemd-notify then waits (BARRIER=1,
// systemd 246+) until systemd has processed the message, so `true` means systemd has seen it.
import { execFile } from 'node:child_process';

export interface NotifyOptions {
  /** Path of the systemd-notify binary; default from PATH. */
  command?: string;
  timeoutMs?: number;
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
  return new Promise((resolve) => {
    execFile(
      opts.command ?? 'systemd-notify',
      [`--pid=${process.pid}`, ...assignments],
      { timeout: opts.timeoutMs ?? 5_000, env: process.env },
      (err) => resolve(!err),
    );
  });
}
