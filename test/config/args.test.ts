import { describe, expect, it } from 'vitest';
import { checkArgs, closest, OPTIONS, parseArgs, unknownEnvWarnings } from '../../src/config/Config.js';
import { TracewireError } from '../../src/errors/errors.js';

/** The message of the TW_CONFIG_INVALID `f` throws. */
function refusal(f: () => void): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TracewireError);
    expect((e as TracewireError).code).toBe('TW_CONFIG_INVALID');
    return (e as Error).message;
  }
  throw new Error('expected TW_CONFIG_INVALID');
}

describe('command-line arguments', () => {
  it('tells a flag given without a value from one given a value, and never gives a boolean flag the next argument', () => {
    const p = parseArgs(['demo', '--quiet', 'x', '--api-token', '--users=2', '--otlp-token='], new Set(['--quiet']));
    expect(p.flags).toEqual({ '--quiet': 'true', '--api-token': 'true', '--users': '2', '--otlp-token': '' });
    expect([...p.bare].sort()).toEqual(['--api-token', '--quiet']);
    expect(p.positionals).toEqual(['demo', 'x']);
  });

  it('accepts every option and the command\'s own flags, and refuses anything else', () => {
    const own = { valued: ['--user'], booleans: ['--quiet'] };
    const all = ['cmd', ...OPTIONS.flatMap((o) => [o.flag, 'v']), '--user', 'u', '--quiet'];
    expect(() => checkArgs(parseArgs(all, new Set(['--quiet'])), own)).not.toThrow();
    expect(refusal(() => checkArgs(parseArgs(['cmd', '--api-tokn', 's3cret']), own))).toBe(
      'invalid configuration: unknown option --api-tokn for tracewire cmd (did you mean --api-token?); see tracewire help',
    );
    expect(refusal(() => checkArgs(parseArgs(['cmd', '--api-token']), own))).toMatch(/--api-token needs a value/);
    expect(refusal(() => checkArgs(parseArgs(['cmd', 'stray']), own))).toMatch(/unexpected argument "stray" for tracewire cmd/);
    expect(() => checkArgs(parseArgs(['cmd', 'RUN']), { positionals: 1 })).not.toThrow();
  });

  it('suggests the nearest known name only when it is near', () => {
    const flags = OPTIONS.map((o) => o.flag.slice(2));
    expect(closest('api-tokn', flags)).toBe('api-token'); // a letter left out
    expect(closest('grace-sm', flags)).toBe('grace-ms'); // two swapped
    expect(closest('JWT_SECRET', flags)).toBe('jwt-secret'); // case and underscores
    expect(closest('otlp-max-concurent', flags)).toBe('otlp-max-concurrent');
    expect(closest('grace', flags)).toBe('grace-ms'); // the only flag it starts
    expect(closest('max', flags)).toBeUndefined(); // starts many
    expect(closest('port', flags)).toBeUndefined();
    expect(closest('frobnicate', flags)).toBeUndefined();
  });

  it('warns about TRACEWIRE_* variables that are no setting, not about settings or other variables', () => {
    expect(
      unknownEnvWarnings({ TRACEWIRE_API_TOKEN: 'x', TRACEWIRE_GRACE_MS: '5', TRACEWIRE_DIST: '/d', PATH: '/bin', TRACEWIRE_APITOKEN: 'x', TRACEWIRE_WHATEVER: '1' }),
    ).toEqual([
      'TRACEWIRE_APITOKEN is not a tracewire setting and is ignored (did you mean TRACEWIRE_API_TOKEN?)',
      'TRACEWIRE_WHATEVER is not a tracewire setting and is ignored',
    ]);
  });
});
