import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/audit/Metrics.js';
import { OPTIONS } from '../../src/config/Config.js';
import { ERRORS, TracewireError } from '../../src/errors/errors.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

describe('error catalogue', () => {
  it('documents every error code in the README', () => {
    const missing = Object.keys(ERRORS).filter((code) => !readme.includes(`\`${code}\``));
    expect(missing).toEqual([]);
  });

  it('documents every option, flag and environment variable in the README', () => {
    const missing = OPTIONS.filter((o) => !readme.includes(`\`${o.flag}\``) || !readme.includes(`\`${o.env}\``)).map((o) => o.flag);
    expect(missing).toEqual([]);
  });

  it('documents every metric series in the README', () => {
    const metrics = new Metrics();
    metrics.broker(); // the fan-out's series, registered with a broker only
    const names = metrics.registry.getMetricsAsArray().map((m) => m.name);
    expect(names.length).toBeGreaterThan(20);
    expect(names.filter((n) => !readme.includes(`\`${n}\``))).toEqual([]);
  });

  it('gives each error a status or a close code, and unique close codes per meaning', () => {
    for (const [code, spec] of Object.entries(ERRORS)) {
      // Start-up, frame-level answers, and the WebSocket client's own reports (never an HTTP answer or a server close).
      if (code === 'TW_CONFIG_INVALID' || code === 'TW_WS_UNKNOWN_TYPE' || code === 'TW_WS_BAD_FIELD' || code.startsWith('TW_CLIENT_')) continue;
      expect('status' in spec || 'closeCode' in spec, code).toBe(true);
    }
    const e = new TracewireError('TW_OTLP_TOO_LARGE', 1024);
    expect(e.status).toBe(413);
    expect(e.toJSON()).toEqual({ code: 'TW_OTLP_TOO_LARGE', message: 'request body over 1024 bytes' });
  });
});
