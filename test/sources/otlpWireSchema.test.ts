import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { otlpTypes } from '../../src/sources/otlp/schema.js';
import { RESOURCE_SHAPE, SCOPE_SHAPE, SPAN, type MessageShape } from '../../src/sources/otlp/wire.js';

/**
 * The wire reader validates messages against hand-written shapes (wire.ts); the
 * receiver's .proto text (schema.ts, what protobufjs and the reference decoder
 * use) is the source of truth. The two must not drift apart.
 */

const PACKAGES = ['opentelemetry.proto.trace.v1', 'opentelemetry.proto.common.v1', 'opentelemetry.proto.resource.v1'];

function protoType(name: string): protobuf.Type {
  const root = otlpTypes().request.root;
  for (const pkg of PACKAGES) {
    const t = root.lookup(`${pkg}.${name}`);
    if (t instanceof protobuf.Type) return t;
  }
  throw new Error(`no message ${name} in the OTLP schema`);
}

/** How the wire reader's validator must treat a field of this proto type (wire.ts `Scalar`, or a message). */
function expected(f: protobuf.Field): number | string {
  if (f.resolvedType instanceof protobuf.Type) return `message ${f.resolvedType.parent instanceof protobuf.Type ? `${f.resolvedType.parent.name}.` : ''}${f.resolvedType.name}`;
  if (f.resolvedType instanceof protobuf.Enum) return 0;
  switch (f.type) {
    case 'string':
      return 3;
    case 'bytes':
      return 2;
    case 'fixed64':
    case 'sfixed64':
    case 'double':
      return 1;
    case 'fixed32':
    case 'sfixed32':
    case 'float':
      return 5;
    default:
      return 0; // varints: (u|s)int32/64, bool
  }
}

function actual(f: number | MessageShape): number | string {
  return typeof f === 'number' ? f : `message ${f.name}`;
}

describe("the wire reader's message shapes", () => {
  it('match the OTLP .proto schema field for field, for every message the validator reaches', () => {
    const seen = new Set<MessageShape>();
    const queue: MessageShape[] = [SPAN, RESOURCE_SHAPE, SCOPE_SHAPE];
    while (queue.length > 0) {
      const shape = queue.pop()!;
      if (seen.has(shape)) continue;
      seen.add(shape);
      const type = protoType(shape.name);
      const want: Record<number, number | string> = {};
      for (const f of type.fieldsArray) {
        f.resolve();
        want[f.id] = expected(f);
      }
      const got: Record<number, number | string> = {};
      shape.fields.forEach((f, no) => {
        if (f === undefined) return;
        got[no] = actual(f);
        if (typeof f !== 'number') queue.push(f);
      });
      expect({ message: shape.name, fields: got }).toEqual({ message: shape.name, fields: want });
    }
    expect([...seen].map((s) => s.name).sort()).toEqual(['AnyValue', 'ArrayValue', 'EntityRef', 'InstrumentationScope', 'KeyValue', 'KeyValueList', 'Resource', 'Span', 'Span.Event', 'Span.Link', 'Status']);
  });
});
