import { describe, expect, it } from 'vitest';
import { isoTime } from '../../src/bridge/json.js';

describe('isoTime', () => {
  it('formats exactly like Date#toISOString, fractional milliseconds truncated', () => {
    const base = Date.UTC(2026, 10, 25, 17, 0, 0);
    const samples = [base, base + 0.4, base + 7.9, base + 99.5, base + 999.999, base + 1000, base - 1, base + 86_400_000 + 12.345, 0, 1.5];
    for (let i = 0; i < 2000; i++) samples.push(base + Math.random() * 5000);
    for (const ms of samples) expect(isoTime(ms)).toBe(new Date(Math.floor(ms)).toISOString());
  });
});
