// Entry point of the WASM kernels (AssemblyScript, SIMD). Pointers are byte offsets into the
// exported memory, which the TypeScript side (../kernels.ts) lays out and grows.

export { decodeF32, decodeRowF64, decodeTransposedF64 } from "./decode";
export {
  compactRowsF32,
  gramBlockWidth,
  gramOf,
  gramRows,
  matmulF32,
  matmulF64,
  rebuildDown,
  rebuildUp,
} from "./products";
export { encodeBF16, encodeF16 } from "./encode";
export { orthogonalizeRows } from "./jacobi";
export { backSubstitute, pivotedCholesky, symmetricEigenvectors, tridiagonalize } from "./core";
export { applyReflectors, eigenvectorsAt, tridiagonalEigenvalues } from "./spectrum";
export { gramMatvec, rowsTimesTransposed, sumSquares } from "./norms";

/** First free byte after the module's static data. */
export function heapBase(): usize {
  return __heap_base;
}
