/**
 * The public API stays small and documented: `deno doc mod.ts` lists at most 40 symbols, and
 * each has an example that checks its result (an assertion or a throw) and prints nothing.
 */
import { assert, assertEquals } from "./assert.ts";

interface DocSymbol {
  name: string;
  declarations: {
    location: { filename: string };
    jsDoc?: { tags?: { kind: string; doc?: string }[] };
  }[];
}

async function docSymbols(entry: string): Promise<DocSymbol[]> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", entry],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(code, 0, new TextDecoder().decode(stderr));
  const json = JSON.parse(new TextDecoder().decode(stdout));
  return (Object.values(json.nodes)[0] as { symbols: DocSymbol[] }).symbols;
}

Deno.test("mod.ts exports at most 40 symbols, each with an example that asserts", async () => {
  const symbols = await docSymbols("mod.ts");
  assert(symbols.length <= 40, `${symbols.length} symbols: ${symbols.map((s) => s.name)}`);
  for (const name of ["resize", "plan", "inspect", "renderReport", "ResizeLoraError"]) {
    assert(symbols.some((s) => s.name === name), `${name} is exported`);
  }
  assert(!symbols.some((s) => s.name === "main"), "the CLI's main is not part of the library");
  for (const symbol of symbols) {
    const examples = symbol.declarations.flatMap((d) =>
      d.jsDoc?.tags?.filter((t) => t.kind === "example").map((t) => t.doc ?? "") ?? []
    );
    assert(examples.length > 0, `${symbol.name} has an example`);
    for (const example of examples) {
      assert(/```ts\n/.test(example), `${symbol.name}: the example runs (not ignored)`);
      assert(/assert|throw/.test(example), `${symbol.name}: the example checks its result`);
      assert(!example.includes("console."), `${symbol.name}: the example prints nothing`);
    }
  }
});
