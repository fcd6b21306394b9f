// One pino logger for the process. Logs go to stderr so that stdout stays free for command output.
// Two formats: JSON lines with level names (for log collectors), or text lines shaped like upstream
// flanneld's (klog: "I1202 03:44:21.123456   1234 component] message"), for journald and a terminal.
// The text is formatted in this process, synchronously: pino's pretty transport would run a worker
// thread (about 10 MB more RSS, measured in the README) and can lose the last lines at exit.
import { writeSync } from 'node:fs';
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const LOG_FORMATS = ['json', 'text'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** pino's numeric levels, for readers of JSON logs that compare severities. */
export const LEVEL_VALUES: Readonly<Record<string, number>> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

/** klog's one-letter severities (it has no trace or debug: those are its verbose infos). */
const SEVERITY_LETTER: Readonly<Record<string, string>> = { trace: 'I', debug: 'I', info: 'I', warn: 'W', error: 'E', fatal: 'F' };

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/** A field value as text: bare when it has no spaces or quotes, JSON-quoted otherwise. */
function fieldValue(v: unknown): string {
  const text = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  return typeof v === 'string' && (text === '' || /[\s"=\\]/.test(text)) ? JSON.stringify(text) : text;
}

/**
 * One pino JSON line as a klog-style text line: severity letter, MMDD, local time with
 * microseconds, PID, component, message, then the other fields as key=value.
 */
export function formatTextLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : json + '\n';
  }
  const { level, time, pid, name, msg, component, backend, ...fields } = entry;
  const t = new Date(typeof time === 'number' ? time : Date.now());
  const stamp = `${pad(t.getMonth() + 1)}${pad(t.getDate())} ${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${pad(t.getMilliseconds(), 3)}000`;
  const where = [name, component, backend].filter((x) => typeof x === 'string').join('/');
  const rest = Object.entries(fields).map(([k, v]) => `${k}=${fieldValue(v)}`);
  const letter = SEVERITY_LETTER[String(level)] ?? 'I';
  return `${letter}${stamp} ${String(pid ?? process.pid).padStart(7)} ${where}] ${String(msg ?? '')}${rest.length ? ' ' + rest.join(' ') : ''}\n`;
}

/** A synchronous destination on fd 2 that rewrites each JSON line as text. */
function textDestination(fd = 2): DestinationStream {
  return {
    write(line: string): void {
      writeSync(fd, formatTextLine(line));
    },
  };
}

export function createLogger(level: LogLevel = 'info', name = 'flanneld', format: LogFormat = 'json'): Logger {
  const options = {
    name,
    level,
    base: { pid: process.pid },
    // "level":"warn" rather than pino's 40: readable, and what log collectors expect.
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return pino(options, format === 'text' ? textDestination() : pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything, for library code used outside the daemon. */
export const silentLogger: Logger = pino({ level: 'silent' });
