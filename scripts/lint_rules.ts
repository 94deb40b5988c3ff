/**
 * dprl's own lint rule, run by `deno lint` (see `lint.plugins` in
 * deno.json): `dprl/max-function-lines`, no function, method or arrow
 * function of the library (`lib/`, `mod.ts`, `cli.ts`) longer than
 * {@linkcode MAX_FUNCTION_LINES} lines. A function
 * that must be longer (a byte-level state machine) says why above a
 * `// deno-lint-ignore dprl/max-function-lines` comment.
 *
 * @module
 */

/** The longest a function may be, in lines, from its first line to its last. */
export const MAX_FUNCTION_LINES = 80;

/** The files the rule holds for: the library, not its tests or benchmarks. */
const LIBRARY = /\/(lib\/.*|mod|cli)\.ts$/;

const plugin: Deno.lint.Plugin = {
  name: "dprl",
  rules: {
    "max-function-lines": {
      create(context) {
        if (!LIBRARY.test(context.filename)) return {};
        const check = (node: Deno.lint.Node): void => {
          const [start, end] = node.range;
          const lines = context.sourceCode.text.slice(start, end).split("\n").length;
          if (lines > MAX_FUNCTION_LINES) {
            context.report({
              node,
              message: `Function of ${lines} lines, more than ${MAX_FUNCTION_LINES}`,
              hint: "Split it into named steps, each with one job",
            });
          }
        };
        return {
          FunctionDeclaration: check,
          FunctionExpression: check,
          ArrowFunctionExpression: check,
        };
      },
    },
  },
};

export default plugin;
