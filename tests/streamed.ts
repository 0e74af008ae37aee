/**
 * A check shared by the backend tests: results stream out through `onResult`.
 *
 * @module
 */
import type { BackendCallOptions } from "../src/linalg/backend.ts";
import { assert, assertEquals } from "./assert.ts";

/** What {@link streamed} checks beyond its defaults. */
export interface StreamedOptions {
  /** Named in failure messages. */
  readonly what?: string;
  /** Items must come in input order. */
  readonly inOrder?: boolean;
}

/**
 * Runs a backend call with an `onResult` that records each item, and asserts that every item came
 * once, before the call resolved, as the very object the call returned (and in input order when
 * asked).
 */
export async function streamed<T>(
  call: (options: BackendCallOptions<T>) => Promise<T[]>,
  { what = "call", inOrder = false }: StreamedOptions = {},
): Promise<T[]> {
  const got = new Map<number, T>();
  let settled = false;
  const results = await call({
    onResult: (i, result) => {
      assert(!settled, `${what}: item ${i} after the call resolved`);
      assert(!got.has(i), `${what}: item ${i} twice`);
      if (inOrder) assertEquals(i, got.size, `${what}: item ${i} out of order`);
      got.set(i, result);
    },
  });
  settled = true;
  assertEquals(got.size, results.length, what);
  results.forEach((r, i) => assert(got.get(i) === r, `${what}: item ${i} differs`));
  return results;
}
