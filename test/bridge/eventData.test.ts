import { describe, expect, it } from 'vitest';
import { EVENT_TYPES } from '../../src/audit/Metrics.js';
import { eventData, eventDataLength, type EventDataSource } from '../../src/bridge/eventData.js';

/** The data object JSON.stringify would be given for each event type (undefined fields left out). */
function expected(type: (typeof EVENT_TYPES)[number], s: EventDataSource): unknown {
  const duration = s.endMs === undefined ? null : Math.max(0, Math.round((s.endMs - s.startMs) * 1000) / 1000);
  const done = { status: s.error === undefined ? 'ok' : 'error', duration_ms: duration, error: s.error };
  switch (type) {
    case 'agent_started':
      return { agent: s.name, parent_agent: s.parentAgent };
    case 'agent_thinking':
      return { model: s.model ?? null };
    case 'tool_executing':
      return { tool: s.name, call_id: s.callId ?? null };
    case 'tool_completed':
      return { tool: s.name, call_id: s.callId ?? null, ...done };
    case 'agent_completed':
      return { agent: s.name, ...done };
  }
}

function sources(names: readonly (string | undefined)[]): EventDataSource[] {
  const out: EventDataSource[] = [];
  for (const name of names)
    for (const other of [undefined, 'x', 'call_7f3a'])
      for (const error of [undefined, 'tool_error'])
        for (const endMs of [undefined, 1700000000123.25, 1700000009999])
          out.push({ kind: 'tool', name, callId: other, model: other, parentAgent: other, startMs: 1700000000000.5, endMs, error });
  return out;
}

describe('event data (written by hand from the span)', () => {
  it('is exactly JSON.stringify of the data object, for every type and whatever the names contain', () => {
    const names = [undefined, 'search_docs', 'say "hi"', 'C:\\tools', 'line\nbreak\u0001', 'résumé 日本語', 'rocket 🚀', 'half \ud83d surrogate'];
    for (const s of sources(names)) for (const type of EVENT_TYPES) expect(eventData(type, s)).toBe(JSON.stringify(expected(type, s)));
  });

  it('knows its length before writing it (held events are bounded by it): exact for plain names, a duration counted as 8 characters', () => {
    for (const s of sources([undefined, 'search_docs', 'supervisor'])) {
      for (const type of EVENT_TYPES) {
        const text = eventData(type, s);
        const m = /"duration_ms":([^,}]+)/.exec(text);
        const slack = m === null ? 0 : 8 - m[1]!.length;
        expect(eventDataLength(type, s)).toBe(text.length + slack);
      }
    }
  });
});
