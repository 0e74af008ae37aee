/**
 * The tests' seeded random numbers: Park–Miller's minimal standard generator, uniform in
 * [−0.5, 0.5). Same seed, same sequence, on every machine.
 *
 * @module
 */

/** A generator of numbers in [−0.5, 0.5) from `seed` (a whole number in 1 … 2³¹ − 2). */
export function rng(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 16807) % 2147483647;
    return s / 2147483647 - 0.5;
  };
}
