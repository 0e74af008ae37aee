/**
 * Runs the CLI with the given arguments in this (child) process, then prints
 * its peak resident memory as `VmHWM <kB>` (Linux /proc) and exits with the
 * CLI's status: for tests that bound the memory a hostile input may take.
 */
import { main } from "../cli.ts";

const code = await main(Deno.args);
const status = await Deno.readTextFile("/proc/self/status").catch(() => "");
console.log(`VmHWM ${/VmHWM:\s*(\d+)/.exec(status)?.[1] ?? "unknown"}`);
Deno.exit(code);
