// How flannelctl node cleanup reads `iptables -S` lines back into the words of the rule to delete.
import { describe, expect, it } from 'vitest';
import { iptablesWords } from '../src/ctl/node-cleanup.js';

describe('iptablesWords', () => {
  it('keeps a quoted comment as one word, as iptables -D needs it', () => {
    expect(iptablesWords('-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD')).toEqual(
      ['-A', 'FORWARD', '-m', 'comment', '--comment', 'flanneld forward', '-j', 'FLANNEL-FWD']);
  });

  it('unescapes quotes and backslashes inside a quoted word, and keeps an empty quoted word', () => {
    expect(iptablesWords('-A X -m comment --comment "say \\"hi\\" \\\\ there" -j Y')).toEqual(
      ['-A', 'X', '-m', 'comment', '--comment', 'say "hi" \\ there', '-j', 'Y']);
    expect(iptablesWords('-A X --comment "" -j Y')).toEqual(['-A', 'X', '--comment', '', '-j', 'Y']);
  });

  it('splits on runs of spaces and reads an empty line as no words', () => {
    expect(iptablesWords('-N   FLANNEL-POSTRTG ')).toEqual(['-N', 'FLANNEL-POSTRTG']);
    expect(iptablesWords('')).toEqual([]);
  });
});
