import { describe, expect, it } from 'vitest';
import { isoOf } from '../../src/util/time.js';

describe('isoOf', () => {
  it('is toISOString() inside a Date\'s range, its ends outside it, the epoch for NaN; never throws', () => {
    expect(isoOf(1_700_000_000_123.7)).toBe(new Date(1_700_000_000_123.7).toISOString());
    expect(isoOf(-1)).toBe('1969-12-31T23:59:59.999Z');
    expect(isoOf(1e300)).toBe('+275760-09-13T00:00:00.000Z');
    expect(isoOf(Number.POSITIVE_INFINITY)).toBe('+275760-09-13T00:00:00.000Z');
    expect(isoOf(Number.NEGATIVE_INFINITY)).toBe('-271821-04-20T00:00:00.000Z');
    expect(isoOf(Number.NaN)).toBe('1970-01-01T00:00:00.000Z');
  });
});
