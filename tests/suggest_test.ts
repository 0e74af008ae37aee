/** The edit distance behind "did you mean …?", against distances counted by hand. */
import { assertEquals } from "./assert.ts";
import { closestName, editDistance } from "../src/suggest.ts";

Deno.test("editDistance counts insertions, deletions, substitutions and neighbour swaps", () => {
  const cases: [string, string, number][] = [
    ["", "", 0],
    ["", "abc", 3],
    ["abc", "", 3],
    ["fro_ckpt", "fro_ckpt", 0],
    ["fro_ckp", "fro_ckpt", 1], // insertion
    ["fro_ckptt", "fro_ckpt", 1], // deletion
    ["fro_ckpx", "fro_ckpt", 1], // substitution
    ["dyr_run", "dry_run", 1], // swap of neighbours
    ["kitten", "sitting", 3],
    ["ca", "abc", 3], // optimal string alignment: a swapped pair is not edited again
    ["dry-run", "dry_run", 1],
  ];
  for (const [a, b, d] of cases) {
    assertEquals(editDistance(a, b), d, `${a} → ${b}`);
    assertEquals(editDistance(b, a), d, `${b} → ${a}`);
  }
});

Deno.test("closestName suggests only within a typo's reach, the earlier name on a tie", () => {
  const options = ["dry_run", "drop_unmapped", "report", "device"];
  assertEquals(closestName("dryrun", options), "dry_run");
  assertEquals(closestName("DRY_RUN", options), "dry_run");
  assertEquals(closestName("reprot", options), "report");
  assertEquals(closestName("frobnicate", options), undefined);
  assertEquals(closestName("x", options), undefined);
  assertEquals(closestName("ab", ["ax", "xb"]), "ax");
});
