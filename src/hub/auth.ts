import type { IncomingMessage } from 'node:http';
import { errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import { TracewireError } from '../errors/errors.js';
import { bearerOf } from '../util/bearer.js';

export const PROTOCOL = 'tracewire.v1';
const BEARER_PROTOCOL_PREFIX = 'bearer.';

export interface Principal {
  readonly user: string;
  /** Token expiry, epoch ms; the connection is closed then. */
  readonly expiresAtMs: number | undefined;
}

/**
 * Finds the client's token: `Authorization: Bearer`, then the
 * `access_token` query parameter, then a `bearer.<jwt>` WebSocket
 * subprotocol (browsers can set neither headers nor, for some proxies, query
 * strings safely).
 */
export function tokenFrom(req: IncomingMessage, url: URL): string | undefined {
  const h = req.headers.authorization;
  if (h !== undefined && /^bearer\s/i.test(h)) return bearerOf(h);
  const q = url.searchParams.get('access_token');
  if (q) return q;
  const proto = req.headers['sec-websocket-protocol'];
  if (typeof proto === 'string') {
    for (const p of proto.split(',')) {
      const t = p.trim();
      if (t.startsWith(BEARER_PROTOCOL_PREFIX)) return t.slice(BEARER_PROTOCOL_PREFIX.length) || undefined;
    }
  }
  return undefined;
}

/** HS256 JWT verification: `sub` is the user id, `exp` is enforced. */
export class JwtVerifier {
  private readonly key: Uint8Array;

  constructor(secret: string) {
    this.key = new TextEncoder().encode(secret);
  }

  async verify(token: string | undefined): Promise<Principal> {
    if (token === undefined) throw new TracewireError('TW_AUTH_MISSING');
    try {
      const { payload } = await jwtVerify(token, this.key, { algorithms: ['HS256'], requiredClaims: ['exp'] });
      if (typeof payload.sub !== 'string' || payload.sub === '') throw new TracewireError('TW_AUTH_INVALID', 'no "sub" (user id) claim');
      return { user: payload.sub, expiresAtMs: typeof payload.exp === 'number' ? payload.exp * 1000 : undefined };
    } catch (err) {
      if (err instanceof TracewireError) throw err;
      if (err instanceof joseErrors.JWTExpired) {
        const exp = typeof err.payload.exp === 'number' ? new Date(err.payload.exp * 1000).toISOString() : 'unknown';
        throw new TracewireError('TW_AUTH_EXPIRED', exp);
      }
      throw new TracewireError('TW_AUTH_INVALID', err instanceof Error ? err.message : String(err));
    }
  }

  /** A token for `user`, valid for `ttlSeconds` (dev tokens, tests, the probe). */
  async sign(user: string, ttlSeconds = 3600): Promise<string> {
    return new SignJWT({})
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(user)
      .setIssuedAt()
      .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
      .sign(this.key);
  }
}
