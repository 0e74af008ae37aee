/**
 * A backend for tests that spy on or change one call: every call goes to `inner` except those
 * `overrides` replaces. Closing it leaves `inner` open (the test owns that).
 *
 * @module
 */

import type { Backend } from "../src/linalg/backend.ts";

/** `inner` with `overrides` in place of some of its calls. */
export function delegating(inner: Backend, overrides: Partial<Backend> = {}): Backend {
  return {
    name: inner.name,
    description: inner.description,
    decompose: (layers, options) => inner.decompose(layers, options),
    rebuild: (requests, options) => inner.rebuild(requests, options),
    baseNorms: (weights, which, options) => inner.baseNorms(weights, which, options),
    subspaceScales: (requests, options) => inner.subspaceScales(requests, options),
    spectra: (matrices, options) => inner.spectra(matrices, options),
    singularPairs: (requests, options) => inner.singularPairs(requests, options),
    close: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
    ...overrides,
  };
}
