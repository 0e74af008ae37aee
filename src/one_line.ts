/**
 * Messages stay one line: text quoted from a file (tensor names, metadata
 * keys, JSON parser excerpts) may hold line breaks or terminal escapes, which
 * would split an error line or drive the user's terminal.
 *
 * @module
 */

// deno-lint-ignore no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
const NAMED_ESCAPES: Readonly<Record<string, string>> = {
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\x1b": "\\e",
};

/**
 * Escapes control characters (C0, DEL, C1, and the Unicode line and
 * paragraph separators): `\n`, `\r`, `\t`, `\e` by name, the rest as `\uXXXX`.
 *
 * @example
 * ```ts
 * import { oneLine } from "./one_line.ts";
 * const text = oneLine("tensor 'a\nb\x1b[31m'");
 * if (text !== "tensor 'a\\nb\\e[31m'") throw new Error(text);
 * ```
 */
export function oneLine(text: string): string {
  return text.replace(
    CONTROL_CHARS,
    (c) => NAMED_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}
