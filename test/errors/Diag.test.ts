import { describe, expect, it } from 'vitest';
import { Diag } from '../../src/errors/Diag.js';

describe('Diag', () => {
  it('logs a repeated problem once, then one warning per interval carrying the count', () => {
    const lines: string[] = [];
    let now = 0;
    const d = new Diag('warn', (l) => lines.push(l), () => now);
    d.repeated('q', 'TracewireSpanProcessor', (n) => `dropped ${n} span records`, 5, 1000);
    d.repeated('q', 'TracewireSpanProcessor', (n) => `dropped ${n} span records`, 7, 1000);
    now = 500;
    d.repeated('q', 'TracewireSpanProcessor', (n) => `dropped ${n} span records`, 1, 1000);
    expect(lines).toHaveLength(1);
    now = 1200;
    d.repeated('q', 'TracewireSpanProcessor', (n) => `dropped ${n} span records`, 2, 1000);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/WARN TracewireSpanProcessor: dropped 5 span records$/);
    expect(lines[1]).toMatch(/WARN TracewireSpanProcessor: dropped 10 span records$/);
  });

  it('respects the level and never throws from a broken sink', () => {
    const lines: string[] = [];
    new Diag('error', (l) => lines.push(l)).log('warn', 'X', 'quiet');
    expect(lines).toEqual([]);
    expect(() => new Diag('debug', () => { throw new Error('sink down'); }).log('error', 'X', 'boom')).not.toThrow();
  });
});
