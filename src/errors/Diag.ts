export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

/**
 * The one diagnostic sink: every caught fault and every counted drop that a
 * human should hear about goes through here. It never throws. Repeated
 * problems are logged once (at debug), then at most one warning per interval
 * carrying the count ("TracewireSpanProcessor: dropped 1200 span records ...").
 * Lines start with the component's name.
 */
export class Diag {
  private readonly repeats = new Map<string, { count: number; lastAt: number }>();

  constructor(
    readonly level: LogLevel = 'info',
    private readonly write: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
    private readonly now: () => number = Date.now,
  ) {}

  log(level: Exclude<LogLevel, 'silent'>, component: string, message: string): void {
    if (ORDER[level] < ORDER[this.level]) return;
    try {
      this.write(`${new Date(this.now()).toISOString()} ${level.toUpperCase()} ${component}: ${message}`);
    } catch {
      /* a broken sink must not break the caller */
    }
  }

  /** Count a repeated problem; log the first at debug, then one warning per `intervalMillis` with the count. */
  repeated(key: string, component: string, message: (count: number) => string, by = 1, intervalMillis = 30_000): void {
    let r = this.repeats.get(key);
    const now = this.now();
    if (r === undefined) {
      if (this.repeats.size >= 1000) this.repeats.clear(); // bounded: keys are code-defined, this is a backstop
      r = { count: 0, lastAt: now };
      this.repeats.set(key, r);
      this.log('debug', component, message(by));
      this.log('warn', component, message(by));
      return;
    }
    r.count += by;
    if (now - r.lastAt >= intervalMillis) {
      this.log('warn', component, message(r.count));
      r.count = 0;
      r.lastAt = now;
    }
  }
}
