/**
 * Thin assertion helpers over `node:assert/strict` (JSR's @std/assert is not
 * reachable from this project's CI).
 *
 * @module
 */
import assert from "node:assert/strict";

export const assertEquals: <T>(actual: unknown, expected: T, msg?: string) => void =
  assert.deepStrictEqual;
export const assertStrictEquals: <T>(actual: unknown, expected: T, msg?: string) => void =
  assert.strictEqual;
export const assert_: (value: unknown, msg?: string) => asserts value = assert.ok;
export { assert_ as assert };

/** What an error is about: the fields of resize-lora's error classes. */
export interface ErrorFields {
  readonly file?: string;
  readonly tensor?: string;
  readonly key?: string;
}

/**
 * Asserts that `fn` throws (or rejects with) an error of `errorClass` whose message matches
 * `expected` (a pattern), or whose fields equal `expected` (an object: each field given, and the
 * message one line).
 */
export async function assertRejects(
  fn: () => unknown,
  errorClass: abstract new (...args: never[]) => Error,
  expected?: RegExp | string | ErrorFields,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof errorClass, `expected ${errorClass.name}, got ${e}`);
    if (typeof expected === "string" || expected instanceof RegExp) {
      const re = typeof expected === "string" ? new RegExp(escape(expected)) : expected;
      assert.match((e as Error).message, re);
    } else if (expected !== undefined) {
      const fields = e as ErrorFields;
      for (const name of ["file", "tensor", "key"] as const) {
        if (name in expected) assert.strictEqual(fields[name], expected[name], `error ${name}`);
      }
      assert.ok(
        !(e as Error).message.includes("\n"),
        `a one-line message: ${(e as Error).message}`,
      );
    }
    return e as Error;
  }
  throw new assert.AssertionError({ message: `expected ${errorClass.name} to be thrown` });
}

/** Asserts |actual − expected| ≤ tol · max(1, |expected|) (relative for large values). */
export function assertClose(actual: number, expected: number, tol: number, msg = ""): void {
  const scale = Math.max(1, Math.abs(expected));
  if (!(Math.abs(actual - expected) <= tol * scale)) {
    throw new assert.AssertionError({
      message: `${msg} expected ${expected} ± ${tol * scale}, got ${actual}`,
    });
  }
}

/** Asserts |actual − expected| ≤ tol · |expected| (purely relative). */
export function assertRelClose(actual: number, expected: number, tol: number, msg = ""): void {
  if (!(Math.abs(actual - expected) <= tol * Math.abs(expected))) {
    throw new assert.AssertionError({
      message: `${msg} expected ${expected} (rel ${tol}), got ${actual} (rel err ${
        Math.abs(actual - expected) / Math.abs(expected)
      })`,
    });
  }
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
