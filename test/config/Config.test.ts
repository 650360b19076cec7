import { describe, expect, it } from 'vitest';
import { boundsMemory, boundsMemoryWarning, DEV_JWT_SECRET, describeConfig, OPTIONS, parseArgs, resolveConfig } from '../../src/config/Config.js';
import { TracewireError } from '../../src/errors/errors.js';

describe('config resolver', () => {
  it('takes the flag over the environment over the default', () => {
    const env = { TRACEWIRE_LISTEN: '127.0.0.1:9000', TRACEWIRE_GRACE_MS: '50', TRACEWIRE_MODE: 'audit' };
    expect(resolveConfig({ env }).listen).toEqual({ host: '127.0.0.1', port: 9000 });
    expect(resolveConfig({ env, flags: { '--listen': '127.0.0.2:9001' } }).listen).toEqual({ host: '127.0.0.2', port: 9001 });
    expect(resolveConfig({ env }).graceMillis).toBe(50);
    expect(resolveConfig({ env }).mode).toBe('audit');
    const d = resolveConfig({});
    expect(d.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(d.otlpListen).toEqual({ host: '127.0.0.1', port: 4318 });
    expect(d.mode).toBe('emit');
  });

  it('sums what the bounds can hold, and warns only when it passes 90% of the heap limit', () => {
    const d = resolveConfig({});
    const MiB = 2 ** 20;
    expect(boundsMemory(d).parts.map(([what, flag, n]) => [what, flag, Math.round(n / MiB)])).toEqual([
      ['runs in flight', '--max-runs', 98],
      ['spans in flight', '--max-spans', 458],
      ['traces kept', '--max-traces', 153],
      ['held events', '--max-held-bytes', 64],
      ['resume window', '--replay-max-total-bytes', 256],
      ['judged runs', '--runs-max-bytes', 256],
    ]);
    expect(boundsMemoryWarning(d, 4096 * MiB)).toBeUndefined();
    expect(boundsMemoryWarning(d, 1024 * MiB)).toMatch(/^the configured bounds can hold about 1284 MiB .* more than 90% of the heap limit \(1024 MiB\)/);
    const small = resolveConfig({ env: { TRACEWIRE_REPLAY_MAX_TOTAL_BYTES: String(32 * MiB), TRACEWIRE_RUNS_MAX_BYTES: String(32 * MiB), TRACEWIRE_MAX_TRACES: '40000', TRACEWIRE_MAX_RUNS: '20000', TRACEWIRE_MAX_SPANS: '100000' } });
    expect(Math.round(boundsMemory(small).total / MiB)).toBe(199);
    expect(boundsMemoryWarning(small, 256 * MiB)).toBeUndefined();
  });

  it('parses --flag value and --flag=value', () => {
    const { flags, positionals } = parseArgs(['serve', '--listen', '0.0.0.0:1', '--mode=audit', '--quiet']);
    expect(positionals).toEqual(['serve']);
    expect(flags).toEqual({ '--listen': '0.0.0.0:1', '--mode': 'audit', '--quiet': 'true' });
  });

  it('refuses bad values with TW_CONFIG_INVALID naming where they came from', () => {
    const bad = (input: Parameters<typeof resolveConfig>[0], pattern: RegExp) => {
      try {
        resolveConfig(input);
        throw new Error('expected a config error');
      } catch (e) {
        expect(e).toBeInstanceOf(TracewireError);
        expect((e as TracewireError).code).toBe('TW_CONFIG_INVALID');
        expect((e as Error).message).toMatch(pattern);
      }
    };
    bad({ env: { TRACEWIRE_LISTEN: 'nonsense' } }, /TRACEWIRE_LISTEN="nonsense" is not HOST:PORT/);
    bad({ flags: { '--grace-ms': '-5' } }, /--grace-ms="-5" is not a whole number/);
    bad({ flags: { '--mode': 'loud' } }, /--mode="loud" is not one of emit, audit/);
    bad({ flags: { '--listen': '127.0.0.1:70000' } }, /over 65535/);
    bad({ flags: { '--jwt-secret': 'short' } }, /at least 16/);
    bad({ flags: { '--max-traces': '99999999999999999999' } }, /--max-traces=100000000000000000000 is not a whole number/);
    // Library options (new Tracewire({...})) are checked as their flags are.
    bad({ overrides: { maxTraces: -1 } }, /--max-traces=-1 is not a whole number/);
    bad({ overrides: { graceMillis: 1.5 } }, /--grace-ms=1.5 is not a whole number/);
    bad({ overrides: { maxTraces: 0 } }, /--max-traces=0 is under its minimum 1/);
    bad({ overrides: { runsMaxBytes: 1000 } }, /--runs-max-bytes=1000 is under its minimum 65536/);
    bad({ overrides: { wsMaxBufferedBytes: Number.NaN } }, /--ws-max-buffered-bytes=NaN is not a whole number/);
    expect(resolveConfig({ overrides: { maxTraces: 3, graceMillis: 0 } })).toMatchObject({ maxTraces: 3, graceMillis: 0 });
  });

  it('refuses the built-in dev secret off loopback', () => {
    expect(() => resolveConfig({ flags: { '--listen': '0.0.0.0:8080' } })).toThrow(/must be set when listening on 0.0.0.0/);
    expect(resolveConfig({ flags: { '--listen': '0.0.0.0:8080', '--jwt-secret': 'a-real-secret-of-some-length' } }).listen.host).toBe('0.0.0.0');
    // A host name that only starts like a loopback address is not one.
    expect(() => resolveConfig({ flags: { '--listen': '127.evil.example:8080' } })).toThrow(/must be set when listening on 127.evil.example/);
    for (const host of ['127.0.0.1', '127.0.0.2', 'localhost', '::1']) expect(resolveConfig({ flags: { '--listen': `${host.includes(':') ? `[${host}]` : host}:8080` } }).listen.host).toBe(host);
  });

  it('prints every option with secrets hidden', () => {
    const cfg = resolveConfig({ flags: { '--jwt-secret': 'super-secret-value-123', '--otlp-token': 'ingest-token-xyz' } });
    const text = describeConfig(cfg);
    for (const o of OPTIONS) expect(text).toContain(o.flag);
    expect(text).not.toContain('super-secret-value-123');
    expect(text).not.toContain('ingest-token-xyz');
    expect(text).not.toContain(DEV_JWT_SECRET);
    expect(text).toMatch(/--jwt-secret\s+\*\*\*/);
  });

  it('checks the broker options and prints the broker URL without its credentials', () => {
    const bad = (flags: Record<string, string>, pattern: RegExp): void => {
      expect(() => resolveConfig({ flags })).toThrow(pattern);
    };
    bad({ '--broker-url': 'localhost:6379' }, /--broker-url must be redis:\/\/host:port, rediss:\/\/host:port or unix:\/\/\/path/);
    bad({ '--broker-url': 'nats://broker:4222' }, /--broker-url must be redis:\/\/.*\(got nats:\/\/broker:4222\)/);
    bad({ '--broker-url': 'unix://' }, /--broker-url must be/);
    bad({ '--broker-url': 'not a url at all' }, /--broker-url is not a URL/);
    bad({ '--instance-id': 'has space' }, /--instance-id="has space" must be 1-128 of/);
    bad({ '--broker-prefix': '' }, /--broker-prefix must not be empty/);
    bad({ '--broker-report-timeout-ms': '10' }, /--broker-report-timeout-ms=10 is under its minimum 100/);
    for (const url of ['redis://redis:6379', 'rediss://user:pw@redis.internal:6380/2', 'unix:///run/redis/redis.sock']) expect(resolveConfig({ flags: { '--broker-url': url } }).brokerUrl).toBe(url);
    expect(resolveConfig({}).brokerUrl).toBe('');

    const text = describeConfig(resolveConfig({ env: { TRACEWIRE_BROKER_URL: 'redis://tracewire:hunter2-password@redis:6379/0' } }));
    expect(text).not.toContain('hunter2-password');
    expect(text).toMatch(/--broker-url\s+redis:\/\/\*\*\*:\*\*\*@redis:6379\/0/);
    expect(describeConfig(resolveConfig({}))).toMatch(/--broker-url\s+\(unset\)/);
  });

  it('freezes the result', () => {
    const cfg = resolveConfig({});
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(Object.isFrozen(cfg.listen)).toBe(true);
  });
});
