// The envelope every widget message travels in, `{kind, id, ...fields}`, mirrored from
// kerasllm_widget/widgets/envelope.py; tests/test_envelope.py checks that both sides agree.
//
// The chat (protocol.ts) and the inspectors (inspect_protocol.ts) name their own kinds and fields;
// what they share lives here. A kind is "<namespace>.<name>": the namespace says which protocol a
// message belongs to. `id` is the request a message belongs to (chosen by the view that sent it,
// or by the kernel for a request made from Python); "" for a message that answers no request.

/** The keys every message has, in the order they are written. */
export const ENVELOPE_KEYS = ["kind", "id"] as const;

/** What a kind looks like: a namespace, a dot, a name. */
export const KIND_PATTERN = /^[a-z]+\.[a-z_]+$/;

/** The part every message shares; each protocol's messages extend it with their own fields. */
export interface Envelope<K extends string = string> {
  kind: K;
  id: string;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * A custom message narrowed to an envelope whose kind is one of `kinds`, or null. Messages with
 * kinds this bundle does not know (another protocol's, or a newer kernel's) are ignored rather
 * than thrown on.
 */
export function parseEnvelope(
  message: unknown,
  kinds: ReadonlySet<string>,
): (Envelope & Record<string, unknown>) | null {
  if (!isRecord(message)) return null;
  const { kind, id } = message;
  if (typeof kind !== "string" || typeof id !== "string" || !kinds.has(kind)) return null;
  return message as Envelope & Record<string, unknown>;
}

/** The message to send: the envelope, then the fields. */
export function envelope<K extends string, F extends object>(
  kind: K,
  id: string,
  fields: F,
): Envelope<K> & F {
  return { kind, id, ...fields };
}

let counter = 0;
const session = Math.random().toString(36).slice(2, 8);

/**
 * An id unique across the views of this page (`crypto.randomUUID` needs a secure context):
 * `prefix`, this page's session, a dash and a counter, as the kernel's `new_id` writes them.
 */
export function newId(prefix: string): string {
  counter += 1;
  return `${prefix}${session}-${counter}`;
}
