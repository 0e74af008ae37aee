// A pasted kohya resize_lora.py command line (kohya-ss/sd-scripts at commit
// 48d368fa557731ad0488c07304dfeba8c07910eb: its argparse options and defaults) → resize-lora.
import { join } from "node:path";
import { assertEquals, assertRejects } from "./assert.ts";
import { UsageError } from "../src/errors.ts";
import {
  isKohyaCommandLine,
  kohyaToResizeLoraArgs,
  translateKohyaArgs,
} from "../src/kohya_args.ts";
import { main } from "../cli.ts";
import { FIXTURES } from "./kohya_cases.ts";

const IO = ["--model", "in.safetensors", "--save_to", "out.safetensors"];

Deno.test("the issue's command line translates option by option", () => {
  const k = translateKohyaArgs([
    ...IO,
    ...["--new_rank", "8", "--dynamic_method", "sv_fro", "--dynamic_param", "0.9"],
    ...["--new_conv_rank", "4", "--save_precision", "fp16", "--device", "cpu", "--verbose"],
  ]);
  assertEquals(k, {
    model: "in.safetensors",
    saveTo: "out.safetensors",
    recipe: "sv_fro=0.9,rank=8,conv_rank=4",
    outputDtype: "16",
    device: "cpu",
    verbose: true,
  });
  assertEquals(kohyaToResizeLoraArgs(k), [
    "in.safetensors",
    ...["--save_to", "out.safetensors", "-r", "sv_fro=0.9,rank=8,conv_rank=4"],
    ...["-t", "16", "-d", "cpu", "-v", "--no_norms_cache"],
  ]);
});

Deno.test("kohya's defaults: --new_rank 4, conv rank = new_rank, float32 output", () => {
  const k = translateKohyaArgs(IO);
  assertEquals([k.recipe, k.outputDtype, k.device, k.verbose], ["rank=4", "32", "auto", false]);
  assertEquals(translateKohyaArgs([...IO, "--save_precision", "float"]).outputDtype, "32");
  assertEquals(translateKohyaArgs([...IO, "--save_precision", "bf16"]).outputDtype, "bf16");
  assertEquals(translateKohyaArgs([...IO, "--new_rank", "16"]).recipe, "rank=16");
  // A whole-number parameter is a Python float, as kohya's argparse makes it.
  const ratio = translateKohyaArgs([...IO, "--dynamic_method", "sv_ratio", "--dynamic_param", "8"]);
  assertEquals(ratio.recipe, "sv_ratio=8.0,rank=4");
});

Deno.test("argparse spellings: --opt=value, unique prefixes; cuda means the default device", () => {
  const k = translateKohyaArgs([
    "--model=in.safetensors",
    "--save_to=out.safetensors",
    "--dynamic_m",
    "sv_cumulative",
    "--dynamic_p=0.95",
    "--new_c",
    "2",
    "--device",
    "cuda:0",
    "--svd_lowrank_niter",
    "2",
  ]);
  assertEquals([k.recipe, k.device], ["sv_cumulative=0.95,rank=4,conv_rank=2", "auto"]);
  assertEquals(
    translateKohyaArgs([...IO, "--checkpoint", "base.safetensors"]).checkpoint,
    "base.safetensors",
  );
  assertEquals(
    kohyaToResizeLoraArgs(translateKohyaArgs([...IO, "--checkpoint", "b.safetensors"])).slice(0, 2),
    ["--base", "b.safetensors"],
  );
});

Deno.test("a kohya command line is told by kohya-only option names, spelled in full", () => {
  assertEquals(isKohyaCommandLine(IO), true);
  assertEquals(isKohyaCommandLine(["--save_to", "o.safetensors", "--new_rank=8"]), true);
  assertEquals(
    isKohyaCommandLine(["base.safetensors", "a.safetensors", "--save_to", "o.safetensors"]),
    false,
  );
  assertEquals(
    isKohyaCommandLine(["base.safetensors", "a.safetensors", "-d", "cpu", "--verbose"]),
    false,
  );
  assertEquals(isKohyaCommandLine(["a.safetensors", "--models", "x"]), false);
});

Deno.test("wrong kohya values are one-line usage errors", async () => {
  const bad: [string[], string, string][] = [
    [
      [...IO, "--dynamic_method", "foo", "--dynamic_param", "1"],
      "argument --dynamic_method: invalid choice: 'foo' (choose from 'sv_ratio', 'sv_fro', 'sv_cumulative')",
      "--dynamic_method",
    ],
    [
      [...IO, "--dynamic_param", "0.9"],
      "--dynamic_param 0.9 needs --dynamic_method (sv_ratio, sv_fro, sv_cumulative)",
      "--dynamic_param",
    ],
    [
      [...IO, "--dynamic_method", "sv_fro"],
      "If using dynamic_method, then dynamic_param is required",
      "--dynamic_param",
    ],
    [
      [...IO, "--dynamic_method", "sv_fro", "--dynamic_param", "0"],
      "If using dynamic_method, then dynamic_param is required",
      "--dynamic_param",
    ],
    [
      [...IO, "--dynamic_method", "sv_fro", "--dynamic_param", "x"],
      "argument --dynamic_param: invalid float value: 'x'",
      "--dynamic_param",
    ],
    [[...IO, "--new_rank", "0"], "argument --new_rank: must be >= 1, got 0", "--new_rank"],
    [[...IO, "--new_rank", "2.5"], "argument --new_rank: invalid int value: '2.5'", "--new_rank"],
    [
      [...IO, "--save_precision", "fp8"],
      "argument --save_precision: invalid choice: 'fp8' (choose from 'float', 'fp16', 'bf16')",
      "--save_precision",
    ],
    [
      ["--model", "in.safetensors", "--save_to", "out.ckpt"],
      "The --save_to argument must be specified and must be a .safetensors file.",
      "--save_to",
    ],
    [
      ["--model", "in.safetensors"],
      "The --save_to argument must be specified and must be a .safetensors file.",
      "--save_to",
    ],
    [
      ["--save_to", "out.safetensors", "--new_rank", "4"],
      "the following arguments are required: --model",
      "--model",
    ],
    [[...IO, "--new_rank"], "argument --new_rank: expected one argument", "--new_rank"],
    [
      [...IO, "extra.safetensors"],
      "unrecognized arguments: extra.safetensors",
      "extra.safetensors",
    ],
    [[...IO, "--frobnicate", "1"], "unrecognized arguments: --frobnicate", "--frobnicate"],
    [
      [...IO, "--dynamic", "sv_fro"],
      "ambiguous option: --dynamic could match --dynamic_method, --dynamic_param",
      "--dynamic",
    ],
  ];
  for (const [argv, message, key] of bad) {
    const e = await assertRejects(
      () => Promise.resolve().then(() => translateKohyaArgs(argv)),
      UsageError,
    );
    assertEquals([e.message, (e as UsageError).key], [message, key], argv.join(" "));
  }
});

Deno.test("the CLI: a wrong kohya command line exits 2 with one error line and writes nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-kohya-args-" });
  try {
    const out = join(dir, "out.safetensors");
    const stderr: string[] = [];
    const { error, log } = console;
    console.error = (...a: unknown[]) => stderr.push(a.join(" "));
    console.log = () => {};
    let code;
    try {
      code = await main([
        "--model",
        join(FIXTURES, "microA_r8_te.safetensors"),
        "--save_to",
        out,
        "--dynamic_method",
        "foo",
      ]);
    } finally {
      console.error = error;
      console.log = log;
    }
    assertEquals(code, 2);
    assertEquals(stderr.length, 1);
    assertEquals(
      stderr[0].startsWith("error: argument --dynamic_method: invalid choice: 'foo'"),
      true,
    );
    assertEquals([...Deno.readDirSync(dir)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
