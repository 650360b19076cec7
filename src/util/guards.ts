/** A JSON object (not null, not an array): what parsed input must be before its fields are read. */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
