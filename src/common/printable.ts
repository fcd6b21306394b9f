// Text from etcd (keys, lease values) or from the command line may hold terminal escapes or
// invisible characters. Anything shown to a person (flannelctl tables, error messages) passes
// through printable() first, so a hostile key can neither erase rows nor disguise itself.

/**
 * Characters that must never reach a terminal raw: C0 controls and DEL (Cc, which also covers the
 * C1 range 0x80-0x9f that some terminals read as CSI), format characters such as bidi overrides
 * and zero-width spaces (Cf), and the Unicode line and paragraph separators (Zl, Zp).
 */
const CONTROL = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;
/** Lone surrogates cannot be printed either (they become U+FFFD or worse). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/**
 * What printable() escapes: the above, plus spaces other than U+0020 (no-break, em, ideographic…),
 * which look like a plain space but are the difference between a valid and an invalid address.
 */
const ESCAPED = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Zs}]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/gu;

/** True when `text` holds a control, format or separator character, or a lone surrogate. */
export function hasControlChars(text: string): boolean {
  return CONTROL.test(text) || LONE_SURROGATE.test(text);
}

function escapeChar(ch: string): string {
  const code = ch.codePointAt(0)!;
  if (code === 0x20) return ch;
  if (code === 0x0a) return '\\n';
  if (code === 0x0d) return '\\r';
  if (code === 0x09) return '\\t';
  if (code <= 0xff) return `\\x${code.toString(16).padStart(2, '0')}`;
  return code <= 0xffff ? `\\u${code.toString(16).padStart(4, '0')}` : `\\u{${code.toString(16)}}`;
}

/**
 * `text` with every unprintable character replaced by a visible escape (\n, \x1b, \u202e), cut to
 * `maxChars` characters (then "…" and how many more there were). Other characters, backslashes
 * included, are left alone so that escaping twice changes nothing; an escape sequence is thus
 * indistinguishable from the same literal text, which is harmless for display.
 */
export function printable(text: string, maxChars = Infinity): string {
  let shown = text;
  let cut = 0;
  if (shown.length > maxChars) {
    cut = shown.length - maxChars;
    shown = shown.slice(0, maxChars);
  }
  shown = shown.replace(ESCAPED, escapeChar);
  return cut > 0 ? `${shown}…(${cut} more)` : shown;
}

/** printable() in double quotes, for error messages that name a value (quotes make spaces visible). */
export function quoted(text: string, maxChars = 64): string {
  return `"${printable(text, maxChars)}"`;
}

/**
 * JSON text (from JSON.stringify) with the characters printable() escapes written as \uXXXX
 * escapes: still the same JSON, but safe to print. JSON.stringify escapes C0 controls only, not
 * C1 controls, bidi overrides or U+2028/2029. Raw tab, newline and CR can only be JSON's own
 * whitespace between tokens (inside strings JSON.stringify escapes them), so they stay.
 */
export function terminalSafeJson(json: string): string {
  const unit = (c: string): string => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
  return json.replace(ESCAPED, (ch) => (ch === ' ' || ch === '\n' || ch === '\t' || ch === '\r' ? ch : ch.split('').map(unit).join('')));
}
