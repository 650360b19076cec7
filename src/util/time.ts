/** A Date holds times up to 100,000,000 days either side of the epoch. */
const DATE_LIMIT_MS = 8.64e15;

/**
 * `new Date(ms).toISOString()` for any number: a time outside a Date's range
 * (a span from a broken clock, or set by hand) is shown at that range's end
 * instead of throwing (NaN as the epoch), so one bad span cannot break an
 * event frame or a runs API page.
 */
export function isoOf(ms: number): string {
  const t = Number.isNaN(ms) ? 0 : Math.min(Math.max(ms, -DATE_LIMIT_MS), DATE_LIMIT_MS);
  return new Date(t).toISOString();
}
