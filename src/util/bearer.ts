import { timingSafeEqual } from 'node:crypto';

/** The token of an `Authorization: Bearer <token>` header; undefined when absent, another scheme, or empty. */
export function bearerOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^bearer\s+(.*)$/i.exec(header);
  const token = m?.[1]?.trim();
  return token === undefined || token === '' ? undefined : token;
}

/** Constant-time comparison of a given secret with the expected one. */
export function safeEqual(given: string, expected: string): boolean {
  const x = Buffer.from(given);
  const y = Buffer.from(expected);
  return x.length === y.length && timingSafeEqual(x, y);
}
